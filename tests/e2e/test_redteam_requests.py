"""Red-team findings on requests (issue 16: items 1, 7, 9, 11), over signed HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from bot import directory
from bot.providers import ProviderError
from bot.providers.ledger import LedgerProvider
from storage.models import ChangeRequest, utcnow
from storage.requests import subscription
from tests.harness import ADMIN, NEW_PARTNER, OLD_PARTNER, OWNER, OWNER2, PROD, Harness

TWO_OF_TWO = {"DPOR_REQUIRED_APPROVALS": "2"}


async def new_request(h: Harness, partner: str, reason: str = "red team") -> int:
    status, body = await h.command(f"set prod {partner} {reason}", ADMIN)
    assert status == 200 and "Request #" in body["text"], body
    rid = int(body["text"].split("Request #")[1].split()[0])
    await h.card(rid)
    return rid


async def approve_by_both(h: Harness, rid: int) -> None:
    for owner in (OWNER, OWNER2):
        status, _ = await h.click("dpor_approve", rid, owner)
        assert status == 200
    await h.settle()


def refusing_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider refuses the first change it is asked for (say, a receiver answering 400)."""
    apply = LedgerProvider.apply
    calls: list[str] = []

    async def refuse_first(self: LedgerProvider, subscription_id: str, partner_id: str):
        calls.append(partner_id)
        if len(calls) == 1:
            raise ProviderError("the receiver refused the change (HTTP 400)")
        return await apply(self, subscription_id, partner_id)

    monkeypatch.setattr(LedgerProvider, "apply", refuse_first)


async def failed_once(h: Harness, monkeypatch: pytest.MonkeyPatch) -> int:
    """A request approved by one owner whose apply the provider refused."""
    refusing_once(monkeypatch)
    rid = await new_request(h, NEW_PARTNER)
    await h.click("dpor_approve", rid, OWNER)
    await h.settle()
    assert (await h.request(rid)).status == "failed"
    return rid


@pytest.mark.parametrize("bot_env", [TWO_OF_TWO])
async def test_a_stale_retry_cannot_undo_a_newer_change(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1: A fails; B (2 of 2) is applied; one owner's Retry on A's old card changes nothing."""
    h = harness_any_db
    refusing_once(monkeypatch)
    a = await new_request(h, NEW_PARTNER, "first try")
    await approve_by_both(h, a)
    assert (await h.request(a)).status == "failed"
    b = await new_request(h, OLD_PARTNER, "the other partner after all")
    await approve_by_both(h, b)
    assert (await h.request(b)).status == "applied"

    before = await h.audit_actions()
    status, _ = await h.click("dpor_retry", a, OWNER)
    assert status == 200
    await h.settle()
    assert (await h.request(a)).status == "failed"
    assert "superseded" in h.slack.ephemerals(OWNER)[-1].text
    after = await h.audit_actions()
    assert after[len(before) :] == ["approval.denied"]
    async with h.bot.db.read() as session:
        assert (await subscription(session, PROD)).partner_id == OLD_PARTNER


async def test_a_retry_is_refused_once_its_window_has_passed(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1: a failed request does not stay retryable forever (DPOR_REQUEST_TTL after the failure)."""
    h = harness_any_db
    rid = await failed_once(h, monkeypatch)
    assert (await h.request(rid)).expires_at > utcnow() + timedelta(hours=71)
    async with h.bot.db.write(serial=False) as session:
        await session.execute(
            update(ChangeRequest)
            .where(ChangeRequest.id == rid)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    await h.click("dpor_retry", rid, OWNER)
    await h.settle()
    assert (await h.request(rid)).status == "failed"
    assert "could be retried until" in h.slack.ephemerals(OWNER)[-1].text


async def test_a_retry_in_time_with_nothing_moved_applies(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness_any_db
    rid = await failed_once(h, monkeypatch)
    await h.click("dpor_retry", rid, OWNER2)
    await h.settle()
    assert (await h.request(rid)).status == "applied"


@pytest.mark.parametrize("bot_env", [TWO_OF_TWO])
async def test_the_card_counts_only_approvals_of_current_owners(harness_any_db: Harness) -> None:
    """Item 7: an approval by an owner revoked since no longer shows as counted."""
    h = harness_any_db
    rid = await new_request(h, NEW_PARTNER)
    await h.click("dpor_approve", rid, OWNER)
    await h.settle()
    assert "1 of 2 approvals" in str((await h.card(rid)).blocks)
    await directory.revoke_role(h.bot.db, OWNER, "owner", "prod", actor="test")
    await h.click("dpor_approve", rid, OWNER2)
    await h.settle()
    assert (await h.request(rid)).status == "pending"
    blocks = str((await h.card(rid)).blocks)
    assert "1 of 2 approvals (<@U0OWNER2> <!date^" in blocks and "2 of 2" not in blocks
    assert "U0OWNER>" not in blocks  # the revoked owner's approval is not listed


@pytest.mark.parametrize(
    "value", ["2147483648", "99999999999999999999", "1_0", "١", "１", "-1", "0", "#", "1e3", " 1 2"]
)
async def test_request_numbers_are_read_strictly(harness_any_db: Harness, value: str) -> None:
    """Item 9: out of range or not plain ASCII digits is "no such request", never an internal error."""
    h = harness_any_db
    await new_request(h, NEW_PARTNER)
    before = await h.counts()
    status, body = await h.command(f"cancel {value}", ADMIN)
    assert status == 200 and "went wrong" not in body["text"], body
    assert "request" in body["text"].lower()
    status, _ = await h.click("dpor_approve", value, OWNER, message_ts=(await h.card(1)).ts)
    assert status == 200
    await h.settle()
    assert "went wrong" not in str([e.text for e in h.slack.ephemerals(OWNER)])
    assert (await h.request(1)).status == "pending"
    after = await h.counts()
    assert after["change_requests"] == before["change_requests"]


async def test_a_request_whose_requester_lost_the_role_is_withdrawn_not_approved(
    harness_any_db: Harness,
) -> None:
    """Item 11: revoking the requester's role leaves nothing approvable: the next click withdraws it."""
    h = harness_any_db
    rid = await new_request(h, NEW_PARTNER)
    await directory.revoke_role(h.bot.db, ADMIN, "admin", "prod", actor="test")
    await h.click("dpor_approve", rid, OWNER)
    await h.settle()
    req = await h.request(rid)
    assert (req.status, req.decided_by) == ("cancelled", "dpor-bot")
    assert "withdrawn" in h.slack.ephemerals(OWNER)[-1].text
    actions = await h.audit_actions()
    assert actions[-2:] == ["request.cancelled", "approval.denied"]
    assert "request.approved" not in actions
    assert "Cancelled" in str((await h.card(rid)).blocks)
    assert any("withdrawn" in m.text for m in h.slack.messages(ADMIN))


@pytest.mark.parametrize("bot_env", [TWO_OF_TWO])
async def test_a_retry_is_refused_once_an_approver_is_no_longer_an_owner(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 of 2 approve, the apply fails, one approver loses the owner role: the other cannot apply the
    change alone with a Retry (the approval stopped counting, as it would have before the decision)."""
    h = harness_any_db
    refusing_once(monkeypatch)
    rid = await new_request(h, NEW_PARTNER)
    await approve_by_both(h, rid)
    assert (await h.request(rid)).status == "failed"
    await directory.revoke_role(h.bot.db, OWNER, "owner", "prod", actor="test")

    before = await h.audit_actions()
    status, _ = await h.click("dpor_retry", rid, OWNER2)
    assert status == 200
    await h.settle()
    assert (await h.request(rid)).status == "failed"
    answer = h.slack.ephemerals(OWNER2)[-1].text
    assert "1 of the 2 approvals" in answer and "Make a new request" in answer, answer
    assert (await h.audit_actions())[len(before) :] == ["approval.denied"]
    async with h.bot.db.read() as session:
        assert (await subscription(session, PROD)).partner_id != NEW_PARTNER

    # Given the role back, the approval counts again and the same Retry applies the change.
    await directory.grant_role(h.bot.db, OWNER, "owner", "prod", actor="test")
    await h.click("dpor_retry", rid, OWNER2)
    await h.settle()
    assert (await h.request(rid)).status == "applied"


async def test_a_refusal_on_a_failed_request_blames_no_approver_for_the_failure(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/dpor cancel` on a failed request: the approver and the time are the approval's, the failure the
    provider's; the answer says what remains possible (a Retry on the card)."""
    h = harness_any_db
    rid = await failed_once(h, monkeypatch)
    _, body = await h.command(f"cancel {rid}", ADMIN)
    text = body["text"]
    assert f"was already approved by <@{OWNER}> at <!date^" in text, text
    assert "failed by" not in text and "Retry" in text, text
    assert (await h.request(rid)).status == "failed"
