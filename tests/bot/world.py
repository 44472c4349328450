"""The domain tests' world: two subscriptions, a partner, an admin and owners, and helpers to read it.

Shared by tests/bot (the state machine, concurrency) and tests/durability (the worker's sweep).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot import apply, clicks, directory, lifecycle
from bot.apply import ApplyOutcome
from bot.errors import (
    Refusal,
)
from bot.policy import Policy
from storage.db import Database
from storage.models import Approval, AuditEvent, ChangeRequest, OutboxMessage, Subscription

TEAM = "T0001"
SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PARTNER = "4977985"
OLD_PARTNER = "123456"
ADMIN = "UADMIN"
OWNERS = ("UOWNER1", "UOWNER2")
OWNER, OTHER_OWNER = OWNERS
STRANGER = "USTRANGER"
OPERATOR = "operator"
APPROVAL_CHANNEL = "CAPPROVALS"
NOTIFY_CHANNEL = "CNOTIFY"
CLICK_CHANNEL = "CCLICK"
POLICY = Policy(approval_channel=APPROVAL_CHANNEL, notify_channels=(NOTIFY_CHANNEL,))


async def seed(db: Database, *, owners: tuple[str, ...] = OWNERS) -> None:
    """Two subscriptions, a partner in the directory, an admin and the owners of SUB."""
    await directory.upsert_subscriptions(
        db,
        [
            directory.SubscriptionRow(SUB, "Production", "prod"),
            directory.SubscriptionRow(OTHER_SUB, "Staging", "stage"),
        ],
        actor=OPERATOR,
    )
    await directory.add_partner(db, PARTNER, "Contoso Ltd", actor=OPERATOR)
    await directory.grant_role(db, ADMIN, "admin", SUB, actor=OPERATOR)
    for owner in owners:
        await directory.grant_role(db, owner, "owner", SUB, actor=OPERATOR)


async def set_partner(db: Database, subscription_id: str, partner_id: str | None) -> None:
    async with db.write(serial=False) as session:
        await session.execute(
            update(Subscription).where(Subscription.id == subscription_id).values(partner_id=partner_id)
        )


async def open_request(db: Database, policy: Policy = POLICY, *, user_id: str = ADMIN, **kw: Any) -> int:
    req = await lifecycle.create_request(
        db, policy, team_id=TEAM, user_id=user_id, subscription=SUB, partner=PARTNER, **kw
    )
    return req.id


async def failed_request(db: Database, policy: Policy = POLICY) -> int:
    rid = await open_request(db, policy)
    await clicks.approve(db, policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    await apply.start_apply(db, rid)
    await apply.finish_apply(db, policy, rid, ApplyOutcome(ok=False, error="409 Conflict"))
    return rid


async def load(db: Database, request_id: int) -> ChangeRequest:
    async with db.read() as session:
        req = await session.get(ChangeRequest, request_id)
        assert req is not None
        return req


async def subscription(db: Database, subscription_id: str = SUB) -> Subscription:
    async with db.read() as session:
        sub = await session.get(Subscription, subscription_id)
        assert sub is not None
        return sub


COUNTED = {
    "change_requests": ChangeRequest,
    "approvals": Approval,
    "outbox": OutboxMessage,
    "audit_events": AuditEvent,
}


async def counts(db: Database) -> dict[str, int]:
    async with db.read() as session:
        return {
            name: await session.scalar(select(func.count()).select_from(model)) or 0
            for name, model in COUNTED.items()
        }


@dataclass(frozen=True)
class Mark:
    outbox_id: int
    audit_seq: int


@dataclass(frozen=True)
class Written:
    outbox: list[tuple[str, dict[str, Any]]]
    audit: list[AuditEvent]

    @property
    def actions(self) -> list[str]:
        return [event.action for event in self.audit]

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.outbox]


async def mark(db: Database) -> Mark:
    async with db.read() as session:
        return Mark(
            await session.scalar(select(func.max(OutboxMessage.id))) or 0,
            await session.scalar(select(func.max(AuditEvent.seq))) or 0,
        )


async def written_since(db: Database, since: Mark) -> Written:
    """The outbox rows and audit events written after `since`, in order."""
    async with db.read() as session:
        rows = await session.scalars(
            select(OutboxMessage).where(OutboxMessage.id > since.outbox_id).order_by(OutboxMessage.id)
        )
        outbox = [(row.kind, row.payload) for row in rows]
        events = await session.scalars(
            select(AuditEvent).where(AuditEvent.seq > since.audit_seq).order_by(AuditEvent.seq)
        )
        return Written(outbox, list(events))


CLICKS = {"approve": clicks.approve, "reject": clicks.reject, "retry": clicks.retry}


async def click_refused(
    db: Database,
    act: str,
    refusal: type[Refusal],
    *,
    request_id: int | str,
    user_id: str,
    team_id: str = TEAM,
    channel_id: str | None = CLICK_CHANNEL,
    policy: Policy = POLICY,
) -> Refusal:
    """A refused click changes no state; it writes an `approval.denied` and, given a channel, an ephemeral."""
    before, since = await counts(db), await mark(db)
    with pytest.raises(refusal) as caught:
        await CLICKS[act](
            db, policy, request_id=request_id, team_id=team_id, user_id=user_id, channel_id=channel_id
        )
    message = caught.value.message
    answered = 1 if channel_id else 0
    assert await counts(db) == {
        **before,
        "audit_events": before["audit_events"] + 1,
        "outbox": before["outbox"] + answered,
    }
    written = await written_since(db, since)
    [event] = written.audit
    assert (event.action, event.actor) == ("approval.denied", user_id)
    assert event.data["act"] == act
    assert event.data["reason"] == refusal.code
    assert event.data["message"] == message
    if channel_id:
        assert written.outbox == [("ephemeral", {"channel": channel_id, "user_id": user_id, "text": message})]
    return caught.value


async def refused_quietly(db: Database, refusal: type[Refusal], call: Awaitable[object]) -> Refusal:
    """A refused request or cancel writes nothing at all."""
    before = await counts(db)
    with pytest.raises(refusal) as caught:
        await call
    assert await counts(db) == before
    return caught.value


# --- transitions -------------------------------------------------------------------------------
