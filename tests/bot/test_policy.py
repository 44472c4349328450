"""The policy table: which roles allow which act, and the knobs read from settings."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.policy import PERMISSIONS, Policy, allowed
from bot.settings import load_settings

NONE: frozenset[str] = frozenset()
OWNER = frozenset({"owner"})
ADMIN = frozenset({"admin"})
BOTH = frozenset({"owner", "admin"})

TABLE = [
    # act,      roles,  allowed
    ("request", NONE, False),
    ("request", ADMIN, True),
    ("request", OWNER, True),
    ("request", BOTH, True),
    ("approve", NONE, False),
    ("approve", ADMIN, False),
    ("approve", OWNER, True),
    ("approve", BOTH, True),
    ("reject", NONE, False),
    ("reject", ADMIN, False),
    ("reject", OWNER, True),
    ("retry", NONE, False),
    ("retry", ADMIN, False),
    ("retry", OWNER, True),
    # Saying a portal change was done (or could not be): an owner, as for a retry.
    ("attest", NONE, False),
    ("attest", ADMIN, False),
    ("attest", OWNER, True),
    ("cancel", NONE, False),
    ("cancel", ADMIN, False),
    ("cancel", OWNER, True),
    ("manage_roles", NONE, False),
    ("manage_roles", ADMIN, False),
    ("manage_roles", OWNER, True),
    ("subscribe", NONE, False),
    ("subscribe", ADMIN, True),
    ("subscribe", OWNER, True),
    ("unsubscribe", NONE, False),
    ("unsubscribe", ADMIN, True),
    ("unsubscribe", OWNER, True),
]


@pytest.mark.parametrize(("act", "roles", "expected"), TABLE)
def test_policy_table(act: str, roles: frozenset[str], expected: bool) -> None:
    assert allowed(act, roles) is expected


def test_the_table_covers_every_act() -> None:
    assert {act for act, _, _ in TABLE} == set(PERMISSIONS)


def test_an_unknown_role_allows_nothing() -> None:
    for act in PERMISSIONS:
        assert not allowed(act, {"viewer", "co-admin"})


def test_an_unknown_act_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        allowed("delete", OWNER)


def test_policy_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOR_REQUIRED_APPROVALS", "3")
    monkeypatch.setenv("DPOR_ALLOW_SELF_APPROVAL", "yes")
    monkeypatch.setenv("DPOR_REQUEST_TTL", "1h30m")
    monkeypatch.setenv("DPOR_APPROVAL_CHANNEL", "CAPPROVE")
    monkeypatch.setenv("DPOR_NOTIFY_CHANNELS", "C1,C2")
    policy = Policy.from_settings(load_settings())
    assert policy == Policy(
        required_approvals=3,
        allow_self_approval=True,
        request_ttl=timedelta(hours=1, minutes=30),
        approval_channel="CAPPROVE",
        notify_channels=("C1", "C2"),
    )


def test_policy_defaults_match_the_contract() -> None:
    policy = Policy()
    assert (policy.required_approvals, policy.allow_self_approval, policy.request_ttl) == (
        1,
        False,
        timedelta(hours=72),
    )
