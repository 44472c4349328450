"""Races: many clicks or requests at once are decided exactly once, by the code and by the database.

Each concurrent caller has a Database of its own, so each runs on its own connection: on PostgreSQL
these are truly concurrent transactions, on SQLite separate connections contending for the file lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from bot import audit, clicks, lifecycle
from bot.clicks import Decision
from bot.errors import AlreadyDecided, OpenRequestExists
from bot.policy import Policy
from storage.db import Database
from storage.models import Approval, AuditEvent, ChangeRequest, OutboxMessage
from tests.bot.world import CLICK_CHANNEL, PARTNER, POLICY, SUB, TEAM, load, open_request, seed

CALLERS = 20
OWNERS = tuple(f"UOWNER{n:02d}" for n in range(CALLERS))


@pytest.fixture
async def connections(database_url: str) -> AsyncIterator[list[Database]]:
    """One Database (engine, pool, connection) per concurrent caller."""
    dbs = [Database(database_url) for _ in range(CALLERS)]
    yield dbs
    await asyncio.gather(*(d.dispose() for d in dbs))


async def all_at_once(dbs: list[Database], call: Callable[[Database, str], Awaitable[Any]]) -> list[Any]:
    """Each owner calls at once on a connection of their own; refusals come back as exceptions."""
    return await asyncio.gather(
        *(call(d, user) for d, user in zip(dbs, OWNERS, strict=True)), return_exceptions=True
    )


async def count_where(db: Database, model: type, *where: Any) -> int:
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(model).where(*where)) or 0


async def events_of(db: Database, action: str) -> list[AuditEvent]:
    async with db.read() as session:
        rows = await session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
        return list(rows.all())


async def assert_chain_verifies(db: Database) -> None:
    result = await audit.verify(db)
    assert result.ok, result.problem
    assert result.events == await count_where(db, AuditEvent)


def by_type(results: list[Any]) -> tuple[list[Decision], list[AlreadyDecided]]:
    decisions = [r for r in results if isinstance(r, Decision)]
    refused = [r for r in results if isinstance(r, AlreadyDecided)]
    assert len(decisions) + len(refused) == len(results), [r for r in results if isinstance(r, Exception)]
    return decisions, refused


@pytest.mark.parametrize("required", [1, 2])
async def test_twenty_owners_approve_at_once(
    db: Database, connections: list[Database], required: int
) -> None:
    await seed(db, owners=OWNERS)
    policy = Policy(required_approvals=required, approval_channel=POLICY.approval_channel)
    rid = await open_request(db, policy)

    def click(d: Database, user: str) -> Awaitable[Decision]:
        return clicks.approve(d, policy, request_id=rid, team_id=TEAM, user_id=user, channel_id=CLICK_CHANNEL)

    decisions, refused = by_type(await all_at_once(connections, click))

    assert len(decisions) == required
    assert len(refused) == CALLERS - required
    [final] = [d for d in decisions if d.decided]
    assert (final.approvals, final.required) == (required, required)
    assert sorted(d.approvals for d in decisions) == list(range(1, required + 1))

    req = await load(db, rid)
    assert (req.status, req.decided_by) == ("approved", final.request.decided_by)
    assert await count_where(db, Approval, Approval.request_id == rid) == required
    approved = await events_of(db, "request.approved")
    assert len(approved) == required
    assert [e.data["final"] for e in approved] == [False] * (required - 1) + [True]
    assert len(await events_of(db, "approval.denied")) == CALLERS - required
    assert await count_where(db, OutboxMessage, OutboxMessage.kind == "apply") == 1
    assert await count_where(db, OutboxMessage, OutboxMessage.kind == "ephemeral") == CALLERS - required
    await assert_chain_verifies(db)


async def test_approve_and_reject_at_once(db: Database, connections: list[Database]) -> None:
    await seed(db, owners=OWNERS)
    rid = await open_request(db)

    def click(d: Database, user: str) -> Awaitable[Decision]:
        act = clicks.approve if int(user[-2:]) % 2 else clicks.reject
        return act(d, POLICY, request_id=rid, team_id=TEAM, user_id=user)

    decisions, refused = by_type(await all_at_once(connections, click))
    assert (len(decisions), len(refused)) == (1, CALLERS - 1)
    [winner] = decisions
    req = await load(db, rid)
    assert req.status == winner.request.status
    assert req.status in ("approved", "rejected")
    final_events = await events_of(db, "request.approved") + await events_of(db, "request.rejected")
    assert len(final_events) == 1
    assert await count_where(db, Approval, Approval.request_id == rid) == 1
    apply_rows = await count_where(db, OutboxMessage, OutboxMessage.kind == "apply")
    assert apply_rows == (1 if req.status == "approved" else 0)
    await assert_chain_verifies(db)


async def test_twenty_requests_at_once_open_one(db: Database, connections: list[Database]) -> None:
    await seed(db, owners=OWNERS)

    def request(d: Database, user: str) -> Awaitable[ChangeRequest]:
        return lifecycle.create_request(
            d, POLICY, team_id=TEAM, user_id=user, subscription=SUB, partner=PARTNER
        )

    results = await all_at_once(connections, request)
    created = [r for r in results if isinstance(r, ChangeRequest)]
    refused = [r for r in results if isinstance(r, OpenRequestExists)]
    assert (len(created), len(refused)) == (1, CALLERS - 1), results
    [winner] = created
    assert {r.request_id for r in refused} == {winner.id}
    assert await count_where(db, ChangeRequest) == 1
    assert len(await events_of(db, "request.created")) == 1
    assert await count_where(db, OutboxMessage, OutboxMessage.kind == "card") == 1
    await assert_chain_verifies(db)


# --- the database's own guarantees, below the code ----------------------------------------------------

INSERT_REQUEST = text(
    "INSERT INTO change_requests (team_id, subscription_id, partner_id, requester_id, reason, status,"
    " created_at, expires_at, apply_attempts, updated_at)"
    " VALUES ('T', :sub, '4977985', 'U1', '', :status,"
    " CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0, CURRENT_TIMESTAMP)"
)


async def insert_request(db: Database, status: str) -> None:
    async with db.write(serial=False) as session:
        await session.execute(INSERT_REQUEST, {"sub": SUB, "status": status})


@pytest.mark.parametrize("second", ["pending", "approved", "applying"])
async def test_the_database_refuses_a_second_open_request(db: Database, second: str) -> None:
    await seed(db)
    await insert_request(db, "pending")
    with pytest.raises(IntegrityError, match=r"(?i)unique"):
        await insert_request(db, second)
    assert await count_where(db, ChangeRequest) == 1


async def test_closed_requests_do_not_count_as_open(db: Database) -> None:
    await seed(db)
    for status in ("applied", "rejected", "cancelled", "expired", "failed", "failed", "pending"):
        await insert_request(db, status)
    assert await count_where(db, ChangeRequest) == 7


async def test_the_database_refuses_a_second_decision_by_one_approver(db: Database) -> None:
    await seed(db)
    rid = await open_request(db)
    insert = text(
        "INSERT INTO approvals (request_id, approver_id, decision, at)"
        " VALUES (:rid, 'UOWNER1', :decision, CURRENT_TIMESTAMP)"
    )
    async with db.write(serial=False) as session:
        await session.execute(insert, {"rid": rid, "decision": "approve"})
    with pytest.raises(IntegrityError, match=r"(?i)unique"):
        async with db.write(serial=False) as session:
            await session.execute(insert, {"rid": rid, "decision": "reject"})
    assert await count_where(db, Approval) == 1
    assert (await load(db, rid)).status == "pending"
