"""The change request's state machine: every transition, what it writes, and every refusal.

The seeding and read-back helpers at the top are shared with tests/test_concurrency.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from bot import apply, clicks, directory, lifecycle, watches
from bot.apply import ApplyOutcome
from bot.errors import (
    AlreadyDecided,
    BadInput,
    InvalidPartnerId,
    InvalidSubscriptionId,
    NotAuthorised,
    NotOwner,
    OpenRequestExists,
    PartnerAlreadySet,
    RequestExpired,
    SelfApproval,
    UnknownRequest,
    UnknownSubscription,
    WrongTeam,
)
from bot.policy import Policy
from storage.db import Database
from storage.models import Approval, utcnow
from tests.bot.world import (
    ADMIN,
    APPROVAL_CHANNEL,
    CLICK_CHANNEL,
    NOTIFY_CHANNEL,
    OLD_PARTNER,
    OPERATOR,
    OTHER_OWNER,
    OTHER_SUB,
    OWNER,
    PARTNER,
    POLICY,
    STRANGER,
    SUB,
    TEAM,
    click_refused,
    failed_request,
    load,
    mark,
    open_request,
    refused_quietly,
    seed,
    set_partner,
    subscription,
    written_since,
)

THREAD = {"channel": APPROVAL_CHANNEL}  # a step of the request, as a reply in its card's thread

async def test_create_opens_a_pending_request(db: Database) -> None:
    await seed(db)
    await set_partner(db, SUB, OLD_PARTNER)
    since = await mark(db)
    req = await lifecycle.create_request(
        db, POLICY, team_id=TEAM, user_id=ADMIN, subscription="prod", partner=PARTNER, reason=" move "
    )
    stored = await load(db, req.id)
    assert stored.status == "pending"
    assert (stored.subscription_id, stored.partner_id, stored.previous_partner_id) == (
        SUB,
        PARTNER,
        OLD_PARTNER,
    )
    assert (stored.requester_id, stored.team_id, stored.reason) == (ADMIN, TEAM, "move")
    assert stored.expires_at - stored.created_at == POLICY.request_ttl
    assert stored.card_channel == APPROVAL_CHANNEL
    written = await written_since(db, since)
    # The card, and a DM to each owner who can approve it (the requester is an admin, not an owner).
    assert written.outbox == [
        ("card", {"request_id": req.id}),
        ("ask", {"user_id": OWNER, "request_id": req.id}),
        ("ask", {"user_id": OTHER_OWNER, "request_id": req.id}),
    ]
    [event] = written.audit
    assert (event.action, event.actor, event.request_id, event.subscription_id) == (
        "request.created",
        ADMIN,
        req.id,
        SUB,
    )
    assert event.data["partner_id"] == PARTNER
    assert event.data["previous_partner_id"] == OLD_PARTNER
    assert event.data["reason"] == "move"


async def test_create_posts_the_card_where_asked_without_an_approval_channel(db: Database) -> None:
    await seed(db)
    since = await mark(db)
    rid = await open_request(db, Policy(), channel_id="CASKED")
    assert (await load(db, rid)).card_channel == "CASKED"
    assert (await written_since(db, since)).outbox == [
        ("card", {"request_id": rid}),
        ("ask", {"user_id": OWNER, "request_id": rid}),
        ("ask", {"user_id": OTHER_OWNER, "request_id": rid}),
    ]


async def test_create_without_any_channel_posts_no_card(db: Database) -> None:
    await seed(db)
    since = await mark(db)
    rid = await open_request(db, Policy())
    assert (await load(db, rid)).card_channel is None
    written = await written_since(db, since)
    assert written.outbox == []
    assert written.actions == ["request.created"]


async def test_approve_then_apply_succeeds(db: Database) -> None:
    await seed(db)
    await set_partner(db, SUB, OLD_PARTNER)
    await watches.watch(db, team_id=TEAM, channel_id="CWATCH", subscription="prod", user_id=OWNER)
    rid = await open_request(db)

    since = await mark(db)
    decision = await clicks.approve(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    assert (decision.decided, decision.approvals, decision.required) == (True, 1, 1)
    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("approved", OWNER)
    assert req.decided_at is not None
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        (
            "thread",
            {**THREAD, "request_id": rid, "event": "approval", "by": OWNER, "count": 1, "required": 1},
        ),
        ("apply", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "approved"}),
    ]
    [event] = written.audit
    assert (event.action, event.actor) == ("request.approved", OWNER)
    assert event.data == {"approvals": 1, "required": 1, "final": True}
    async with db.read() as session:
        approvals = (await session.scalars(select(Approval).where(Approval.request_id == rid))).all()
    assert [(a.approver_id, a.decision) for a in approvals] == [(OWNER, "approve")]

    since = await mark(db)
    started = await apply.start_apply(db, rid)
    assert started is not None
    req = await load(db, rid)
    assert (req.status, req.apply_attempts) == ("applying", 1)
    written = await written_since(db, since)
    assert written.outbox == [("card", {"request_id": rid})]
    assert [(e.action, e.actor, e.data) for e in written.audit] == [
        ("apply.started", "dpor-bot", {"partner_id": PARTNER})
    ]

    since = await mark(db)
    outcome = ApplyOutcome(
        ok=True,
        partner_id=PARTNER,
        partner_name="Contoso Ltd",
        detail={"tenant_id": "tid", "object_id": "oid"},
    )
    await apply.finish_apply(db, POLICY, rid, outcome)
    req = await load(db, rid)
    assert req.status == "applied"
    assert req.applied_at is not None
    assert req.error is None
    assert req.result == {
        "partner_id": PARTNER,
        "partner_name": "Contoso Ltd",
        "tenant_id": "tid",
        "object_id": "oid",
    }
    sub = await subscription(db)
    assert sub.partner_id == PARTNER
    assert sub.partner_set_at == req.applied_at
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "applied"}),
        ("thread", {**THREAD, "request_id": rid, "event": "applied"}),
        ("notify", {"channel": NOTIFY_CHANNEL, "request_id": rid, "event": "applied"}),
        ("notify", {"channel": "CWATCH", "request_id": rid, "event": "applied"}),
    ]
    [event] = written.audit
    assert event.action == "apply.succeeded"
    assert event.data["partner_id"] == PARTNER
    assert event.data["previous_partner_id"] == OLD_PARTNER
    assert event.data["tenant_id"] == "tid"

    # Nothing more to do: a second apply of the same request is a no-op.
    assert await apply.start_apply(db, rid) is None


async def test_an_outcome_without_a_partner_id_records_the_requested_one(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    await clicks.approve(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    await apply.start_apply(db, rid)
    since = await mark(db)
    await apply.finish_apply(db, POLICY, rid, ApplyOutcome(ok=True))
    assert (await subscription(db)).partner_id == PARTNER
    assert (await load(db, rid)).result["partner_id"] == PARTNER
    [event] = (await written_since(db, since)).audit
    assert event.data["partner_id"] == PARTNER


async def test_apply_failure_keeps_the_error_and_an_owner_retries(db: Database) -> None:
    await seed(db)
    await set_partner(db, SUB, OLD_PARTNER)
    rid = await open_request(db)
    await clicks.approve(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    await apply.start_apply(db, rid)

    since = await mark(db)
    await apply.finish_apply(db, POLICY, rid, ApplyOutcome(ok=False, error="400 PartnerIdInvalid"))
    req = await load(db, rid)
    assert (req.status, req.error) == ("failed", "400 PartnerIdInvalid")
    assert (await subscription(db)).partner_id == OLD_PARTNER
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "failed"}),
        ("thread", {**THREAD, "request_id": rid, "event": "failed", "error": "400 PartnerIdInvalid"}),
        ("notify", {"channel": NOTIFY_CHANNEL, "request_id": rid, "event": "failed"}),
    ]
    assert [(e.action, e.data) for e in written.audit] == [
        ("apply.failed", {"partner_id": PARTNER, "error": "400 PartnerIdInvalid"})
    ]

    since = await mark(db)
    decision = await clicks.retry(db, POLICY, request_id=rid, team_id=TEAM, user_id=OTHER_OWNER)
    assert decision.decided
    req = await load(db, rid)
    # A retry starts a fresh budget of attempts: a failure by exhausted retries is retried in full.
    assert (req.status, req.error, req.apply_attempts) == ("applying", None, 0)
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("apply", {"request_id": rid}),
        ("thread", {**THREAD, "request_id": rid, "event": "retried", "by": OTHER_OWNER}),
    ]
    assert [(e.action, e.actor, e.data) for e in written.audit] == [
        ("apply.started", OTHER_OWNER, {"retry": True})
    ]

    # The worker picks the retried request up where it stands: applying, its first attempt again.
    since = await mark(db)
    assert await apply.start_apply(db, rid) is not None
    assert (await load(db, rid)).apply_attempts == 1
    assert (await written_since(db, since)).audit == []

    await apply.finish_apply(db, POLICY, rid, ApplyOutcome(ok=True, partner_id=PARTNER))
    assert (await load(db, rid)).status == "applied"
    assert (await subscription(db)).partner_id == PARTNER


async def test_reject(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    since = await mark(db)
    decision = await clicks.reject(db, POLICY, request_id=rid, team_id=TEAM, user_id=OTHER_OWNER)
    assert decision.decided
    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("rejected", OTHER_OWNER)
    assert (await subscription(db)).partner_id is None
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "rejected"}),
        ("thread", {**THREAD, "request_id": rid, "event": "rejected", "by": OTHER_OWNER}),
        ("notify", {"channel": NOTIFY_CHANNEL, "request_id": rid, "event": "rejected"}),
    ]
    assert [(e.action, e.actor) for e in written.audit] == [("request.rejected", OTHER_OWNER)]
    async with db.read() as session:
        decisions = (await session.execute(select(Approval.approver_id, Approval.decision))).all()
    assert [tuple(d) for d in decisions] == [(OTHER_OWNER, "reject")]


async def test_the_requester_cancels(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    since = await mark(db)
    await lifecycle.cancel(db, POLICY, request_id=rid, team_id=TEAM, user_id=ADMIN)
    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("cancelled", ADMIN)
    written = await written_since(db, since)
    # The requester knows already: no DM, but the card, its thread and the channels are told.
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("thread", {**THREAD, "request_id": rid, "event": "cancelled"}),
        ("notify", {"channel": NOTIFY_CHANNEL, "request_id": rid, "event": "cancelled"}),
    ]
    assert [(e.action, e.actor) for e in written.audit] == [("request.cancelled", ADMIN)]
    # Cancelled is not open: a new request may follow.
    assert await open_request(db) != rid


async def test_an_owner_cancels_and_the_requester_is_told(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    since = await mark(db)
    await lifecycle.cancel(db, POLICY, request_id=f"#{rid}", team_id=TEAM, user_id=OWNER)
    assert (await load(db, rid)).status == "cancelled"
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "cancelled"}),
        ("thread", {**THREAD, "request_id": rid, "event": "cancelled"}),
        ("notify", {"channel": NOTIFY_CHANNEL, "request_id": rid, "event": "cancelled"}),
    ]
    assert [(e.action, e.actor) for e in written.audit] == [("request.cancelled", OWNER)]


async def test_expire_due_expires_pending_requests_past_their_ttl(db: Database) -> None:
    await seed(db)
    policy = Policy(request_ttl=timedelta(seconds=30), approval_channel=APPROVAL_CHANNEL)
    rid = await open_request(db, policy)
    assert await lifecycle.expire_due(db) == []
    assert (await load(db, rid)).status == "pending"

    since = await mark(db)
    assert await lifecycle.expire_due(db, now=utcnow() + timedelta(seconds=31)) == [rid]
    req = await load(db, rid)
    assert req.status == "expired"
    assert req.decided_at is not None
    written = await written_since(db, since)
    assert written.outbox == [
        ("card", {"request_id": rid}),
        ("dm", {"user_id": ADMIN, "request_id": rid, "event": "expired"}),
        ("thread", {**THREAD, "request_id": rid, "event": "expired"}),
    ]
    assert [(e.action, e.actor) for e in written.audit] == [("request.expired", "dpor-bot")]

    assert await lifecycle.expire_due(db, now=utcnow() + timedelta(days=1)) == []


async def test_expire_due_leaves_decided_requests_alone(db: Database) -> None:
    await seed(db)
    policy = Policy(request_ttl=timedelta(seconds=30))
    rid = await open_request(db, policy)
    await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    assert await lifecycle.expire_due(db, now=utcnow() + timedelta(days=1)) == []
    assert (await load(db, rid)).status == "approved"


async def test_a_click_on_an_expired_request_expires_it_and_refuses(db: Database) -> None:
    await seed(db)
    policy = Policy(request_ttl=timedelta(milliseconds=1), approval_channel=APPROVAL_CHANNEL)
    rid = await open_request(db, policy)
    await asyncio.sleep(0.01)
    since = await mark(db)
    with pytest.raises(RequestExpired, match=f"Request #{rid} expired"):
        await clicks.approve(
            db, policy, request_id=rid, team_id=TEAM, user_id=OWNER, channel_id=CLICK_CHANNEL
        )
    req = await load(db, rid)
    assert req.status == "expired"
    written = await written_since(db, since)
    assert written.actions == ["request.expired", "approval.denied"]
    assert written.audit[1].data["reason"] == "expired"
    assert written.kinds == ["card", "dm", "thread", "ephemeral"]
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Approval)) == 0


async def test_two_required_approvals(db: Database) -> None:
    await seed(db)
    policy = Policy(required_approvals=2, approval_channel=APPROVAL_CHANNEL)
    rid = await open_request(db, policy)

    since = await mark(db)
    first = await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    assert (first.decided, first.approvals, first.required) == (False, 1, 2)
    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("pending", None)
    written = await written_since(db, since)
    step = {"channel": APPROVAL_CHANNEL, "request_id": rid, "event": "approval", "by": OWNER}
    assert written.outbox == [("card", {"request_id": rid}), ("thread", {**step, "count": 1, "required": 2})]
    assert [(e.action, e.data) for e in written.audit] == [
        ("request.approved", {"approvals": 1, "required": 2, "final": False})
    ]

    refusal = await click_refused(db, "approve", AlreadyDecided, request_id=rid, user_id=OWNER, policy=policy)
    assert "already approved" in refusal.message
    assert "1 of 2" in refusal.message

    since = await mark(db)
    second = await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OTHER_OWNER)
    assert (second.decided, second.approvals, second.required) == (True, 2, 2)
    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("approved", OTHER_OWNER)
    written = await written_since(db, since)
    assert written.kinds == ["card", "thread", "apply", "dm"]
    assert written.outbox[1] == ("thread", {**step, "by": OTHER_OWNER, "count": 2, "required": 2})
    assert [(e.action, e.data) for e in written.audit] == [
        ("request.approved", {"approvals": 2, "required": 2, "final": True})
    ]


async def test_self_approval_when_allowed(db: Database) -> None:
    await seed(db)
    policy = Policy(allow_self_approval=True)
    rid = await open_request(db, policy, user_id=OWNER)
    decision = await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    assert decision.decided
    req = await load(db, rid)
    assert (req.status, req.requester_id, req.decided_by) == ("approved", OWNER, OWNER)


# --- refusals of a new request: nothing is written ----------------------------------------------


async def test_unknown_subscription(db: Database) -> None:
    await seed(db)
    unknown = "99999999-9999-9999-9999-999999999999"
    for ref in (unknown, "no-such-alias"):
        refusal = await refused_quietly(
            db,
            UnknownSubscription,
            lifecycle.create_request(
                db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=ref, partner=PARTNER
            ),
        )
        assert ref in refusal.message


@pytest.mark.parametrize(
    "typo",
    [
        "11111111-2222-3333-4444-55555555555",  # one digit short
        "11111111-2222-3333-4444-5555555555555",  # one digit long
        "11111111-2222-3333-4444-55555555555g",  # not hex
        "111111112222-3333-4444-555555555555",  # a dash missing
        "1111111O-2222-3333-4444-555555555555",  # letter O for zero
    ],
)
async def test_malformed_subscription_id(db: Database, typo: str) -> None:
    await seed(db)
    refusal = await refused_quietly(
        db,
        InvalidSubscriptionId,
        lifecycle.create_request(db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=typo, partner=PARTNER),
    )
    assert "GUID" in refusal.message


@pytest.mark.parametrize("bad", ["abcdefg", "12345", "12345678", "497798a", "", "49 77985"])
async def test_malformed_partner_id(db: Database, bad: str) -> None:
    await seed(db)
    refusal = await refused_quietly(
        db,
        InvalidPartnerId,
        lifecycle.create_request(db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner=bad),
    )
    assert "6 or 7 digits" in refusal.message


async def test_partner_already_set_is_a_no_op(db: Database) -> None:
    await seed(db)
    await set_partner(db, SUB, PARTNER)
    refusal = await refused_quietly(
        db,
        PartnerAlreadySet,
        lifecycle.create_request(db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner=PARTNER),
    )
    assert PARTNER in refusal.message


@pytest.mark.parametrize("advance", ["pending", "approved", "applying"])
async def test_an_open_request_blocks_a_second(db: Database, advance: str) -> None:
    await seed(db)
    rid = await open_request(db)
    if advance in ("approved", "applying"):
        await clicks.approve(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    if advance == "applying":
        await apply.start_apply(db, rid)
    refusal = await refused_quietly(
        db,
        OpenRequestExists,
        lifecycle.create_request(
            db, POLICY, team_id=TEAM, user_id=OWNER, subscription=SUB, partner="1234566"
        ),
    )
    assert isinstance(refusal, OpenRequestExists)
    assert refusal.request_id == rid
    assert f"#{rid}" in refusal.message


async def test_a_failed_request_is_not_open(db: Database) -> None:
    await seed(db)
    rid = await failed_request(db)
    assert await open_request(db) != rid


async def test_requester_must_be_admin_or_owner(db: Database) -> None:
    await seed(db)
    await directory.grant_role(db, "UOTHERADMIN", "admin", OTHER_SUB, actor=OPERATOR)
    for user in (STRANGER, "UOTHERADMIN"):
        refusal = await refused_quietly(
            db,
            NotAuthorised,
            lifecycle.create_request(
                db, POLICY, team_id=TEAM, user_id=user, subscription=SUB, partner=PARTNER
            ),
        )
        assert "admin or owner" in refusal.message


async def test_reason_longer_than_500_characters(db: Database) -> None:
    await seed(db)
    refusal = await refused_quietly(
        db,
        BadInput,
        lifecycle.create_request(
            db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner=PARTNER, reason="x" * 501
        ),
    )
    assert "501" in refusal.message
    assert await open_request(db, reason="x" * 500) > 0


# --- refused clicks: one approval.denied and one ephemeral answer, no change of state -------------


async def test_the_requester_may_not_approve_their_own_request(db: Database) -> None:
    await seed(db)
    rid = await open_request(db, user_id=OWNER)
    await click_refused(db, "approve", SelfApproval, request_id=rid, user_id=OWNER)
    assert (await load(db, rid)).status == "pending"


@pytest.mark.parametrize("act", ["approve", "reject"])
@pytest.mark.parametrize(
    "user", [STRANGER, ADMIN, "UOTHEROWNER"], ids=["stranger", "admin", "other-sub-owner"]
)
async def test_only_an_owner_of_the_subscription_decides(db: Database, act: str, user: str) -> None:
    await seed(db)
    await directory.grant_role(db, "UOTHEROWNER", "owner", OTHER_SUB, actor=OPERATOR)
    rid = await open_request(db, user_id=OWNER)
    refusal = await click_refused(db, act, NotOwner, request_id=rid, user_id=user)
    assert "owner" in refusal.message
    assert (await load(db, rid)).status == "pending"


async def test_a_non_owner_may_not_retry(db: Database) -> None:
    await seed(db)
    rid = await failed_request(db)
    for user in (STRANGER, ADMIN):
        await click_refused(db, "retry", NotOwner, request_id=rid, user_id=user)
    assert (await load(db, rid)).status == "failed"


async def test_a_revoked_owner_no_longer_approves(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    await directory.revoke_role(db, OWNER, "owner", SUB, actor=OPERATOR)
    await click_refused(db, "approve", NotOwner, request_id=rid, user_id=OWNER)
    assert (await load(db, rid)).status == "pending"


async def test_already_decided_says_by_whom_and_how(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    await clicks.approve(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    for act in ("approve", "reject"):
        refusal = await click_refused(db, act, AlreadyDecided, request_id=rid, user_id=OTHER_OWNER)
        assert f"Request #{rid} was already approved by <@{OWNER}>" in refusal.message

    await directory.grant_role(db, OWNER, "owner", None, actor=OPERATOR)
    await directory.grant_role(db, OTHER_OWNER, "owner", OTHER_SUB, actor=OPERATOR)  # one who can approve
    other = await lifecycle.create_request(
        db, POLICY, team_id=TEAM, user_id=OWNER, subscription=OTHER_SUB, partner=PARTNER
    )
    await clicks.reject(db, POLICY, request_id=other.id, team_id=TEAM, user_id=OWNER)
    refusal = await click_refused(db, "approve", AlreadyDecided, request_id=other.id, user_id=OWNER)
    assert f"was already rejected by <@{OWNER}>" in refusal.message


async def test_retry_of_a_request_that_has_not_failed(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    refusal = await click_refused(db, "retry", AlreadyDecided, request_id=rid, user_id=OWNER)
    assert "pending, not failed" in refusal.message


async def test_retry_while_a_newer_request_is_open(db: Database) -> None:
    await seed(db)
    rid = await failed_request(db)
    newer = await lifecycle.create_request(
        db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner="1234566"
    )
    refusal = await click_refused(db, "retry", OpenRequestExists, request_id=rid, user_id=OWNER)
    assert isinstance(refusal, OpenRequestExists)
    assert refusal.request_id == newer.id
    assert f"#{newer.id}" in refusal.message
    assert (await load(db, rid)).status == "failed"


@pytest.mark.parametrize("act", ["approve", "reject", "retry"])
async def test_a_click_from_another_workspace(db: Database, act: str) -> None:
    await seed(db)
    rid = await (failed_request(db) if act == "retry" else open_request(db))
    await click_refused(db, act, WrongTeam, request_id=rid, user_id=OWNER, team_id="TOTHER")


@pytest.mark.parametrize("act", ["approve", "reject", "retry"])
@pytest.mark.parametrize("value", ["999", "abc"])
async def test_a_click_on_an_unknown_request(db: Database, act: str, value: str) -> None:
    await seed(db)
    await click_refused(db, act, UnknownRequest, request_id=value, user_id=OWNER)


async def test_a_refused_click_without_a_channel_writes_only_the_audit(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    await click_refused(db, "approve", NotOwner, request_id=rid, user_id=STRANGER, channel_id=None)


# --- refused cancels: nothing is written -----------------------------------------------------------


async def test_only_the_requester_or_an_owner_cancels(db: Database) -> None:
    await seed(db)
    await directory.grant_role(db, "UADMIN2", "admin", SUB, actor=OPERATOR)
    rid = await open_request(db)
    for user in (STRANGER, "UADMIN2"):
        await refused_quietly(
            db,
            NotAuthorised,
            lifecycle.cancel(db, POLICY, request_id=rid, team_id=TEAM, user_id=user),
        )
    assert (await load(db, rid)).status == "pending"


async def test_cancel_refusals(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    await refused_quietly(
        db, WrongTeam, lifecycle.cancel(db, POLICY, request_id=rid, team_id="TOTHER", user_id=ADMIN)
    )
    await refused_quietly(
        db, UnknownRequest, lifecycle.cancel(db, POLICY, request_id=rid + 1, team_id=TEAM, user_id=ADMIN)
    )
    await lifecycle.cancel(db, POLICY, request_id=rid, team_id=TEAM, user_id=ADMIN)
    refusal = await refused_quietly(
        db, AlreadyDecided, lifecycle.cancel(db, POLICY, request_id=rid, team_id=TEAM, user_id=OWNER)
    )
    assert f"was already cancelled by <@{ADMIN}>" in refusal.message


async def test_an_approval_by_an_owner_since_revoked_no_longer_counts(db: Database) -> None:
    await seed(db)
    policy = replace(POLICY, required_approvals=2)
    rid = await open_request(db, policy)
    await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    for scope in (None, SUB):
        await directory.revoke_role(db, OWNER, "owner", scope, actor=OPERATOR)
    decision = await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OTHER_OWNER)
    assert (decision.decided, decision.approvals) == (False, 1)
    assert (await load(db, rid)).status == "pending"


async def test_a_request_past_its_ttl_does_not_block_a_new_one(db: Database) -> None:
    await seed(db)
    short = replace(POLICY, request_ttl=timedelta(milliseconds=1))
    first = await open_request(db, short)
    await asyncio.sleep(0.01)
    second = await open_request(db, POLICY)
    assert (await load(db, first)).status == "expired"
    assert (await load(db, second)).status == "pending"
