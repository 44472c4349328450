"""PostgreSQL without a global serial section: a request's transactions take no lock that every process
shares; their audit events are chained by the sealer after they commit, into one chain `audit verify`
still checks. Several processes are several Databases on one database, as in test_concurrency."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, clicks, directory, lifecycle
from storage import audit as chain
from storage.db import SERIAL_LOCK_KEY, Database
from storage.models import AuditEvent, AuditPending
from tests.bot.world import ADMIN, OTHER_SUB, OWNER, PARTNER, POLICY, SUB, TEAM, load, seed


async def count(db: Database, model: type) -> int:
    async with db.read() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def pg(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("the sealer runs on PostgreSQL; SQLite chains in the write transaction")
    return database_url


async def test_a_requests_transactions_go_on_while_the_serial_lock_is_held(pg: str) -> None:
    db, other = Database(pg), Database(pg)
    try:
        await seed(db)
        async with other.engine.connect() as holder:  # another process in a long serial write
            await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SERIAL_LOCK_KEY})
            req = await asyncio.wait_for(
                lifecycle.create_request(
                    db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner=PARTNER
                ),
                5,
            )
            await asyncio.wait_for(
                clicks.approve(db, POLICY, request_id=req.id, team_id=TEAM, user_id=OWNER), 5
            )
            assert (await load(db, req.id)).status == "approved"
            # A serial write (a role change: its last-owner check reads across rows) waits its turn.
            grant = asyncio.create_task(directory.grant_role(db, "UNEW", "owner", SUB, actor="test"))
            await asyncio.sleep(0.5)
            assert not grant.done()
            await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SERIAL_LOCK_KEY})
            assert await asyncio.wait_for(grant, 5) is True
        assert await count(db, AuditPending) == 0  # each write's events were chained before it returned
        result = await audit.verify(db)
        assert result.ok, result.problem
        assert result.events == await count(db, AuditEvent)
    finally:
        await db.dispose()
        await other.dispose()


async def test_events_a_process_committed_but_did_not_seal_are_chained_by_the_next(pg: str) -> None:
    db, next_process = Database(pg), Database(pg)
    try:
        await seed(db)
        before = await count(db, AuditEvent)
        # A process killed between its commit and its seal: its events wait in audit_pending.
        async with AsyncSession(db.engine) as session, session.begin():
            await chain.append(
                session,
                [chain.NewEvent(actor="UCRASHED", action="partner.added", data={"n": n}) for n in range(3)],
                db.audit_key or b"",
            )
        assert await count(db, AuditPending) == 3
        assert await count(db, AuditEvent) == before
        await directory.add_partner(next_process, "7654321", "Fabrikam", actor="test")  # any write seals
        assert await count(db, AuditPending) == 0
        async with db.read() as session:
            actors = (await session.scalars(select(AuditEvent.actor).order_by(AuditEvent.seq))).all()
        assert actors[before : before + 3] == ["UCRASHED"] * 3  # in the order they were written
        result = await audit.verify(db)
        assert result.ok and result.events == before + 4, result
    finally:
        await db.dispose()
        await next_process.dispose()


async def test_verify_seals_what_waits_first(pg: str) -> None:
    db = Database(pg)
    try:
        await seed(db)
        async with AsyncSession(db.engine) as session, session.begin():
            event = chain.NewEvent(actor="U1", action="partner.added")
            await chain.append(session, [event], db.audit_key or b"")
        result = await audit.verify(db)
        assert result.ok and result.events == await count(db, AuditEvent)
        assert await count(db, AuditPending) == 0
    finally:
        await db.dispose()


async def test_two_processes_requesting_for_different_subscriptions_share_one_verified_chain(
    database_url: str,
) -> None:
    first, second = Database(database_url), Database(database_url)
    try:
        await seed(first)
        await directory.grant_role(first, ADMIN, "admin", OTHER_SUB, actor="test")
        await directory.grant_role(first, OWNER, "owner", OTHER_SUB, actor="test")

        async def flow(db: Database, subscription: str) -> None:
            req = await lifecycle.create_request(
                db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=subscription, partner=PARTNER
            )
            await clicks.approve(db, POLICY, request_id=req.id, team_id=TEAM, user_id=OWNER)

        await asyncio.gather(flow(first, SUB), flow(second, OTHER_SUB))
        assert await count(first, AuditPending) == 0
        result = await audit.verify(first)
        assert result.ok, result.problem
        assert result.events == await count(first, AuditEvent)
        async with first.read() as session:
            actions = list((await session.scalars(select(AuditEvent.action))).all())
        assert actions.count("request.created") == 2 and actions.count("request.approved") == 2
    finally:
        await first.dispose()
        await second.dispose()


async def test_a_row_inserted_or_edited_in_audit_pending_is_never_chained(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone who can write the database but has no key: an event of their own put in audit_pending
    (backdated), and an event the bot wrote there edited before the sealer took it. The sealer chains the
    bot's untouched event and neither of theirs, says so once in the log, and `audit verify` fails naming
    both until they are deleted."""
    db = Database(pg)
    try:
        await seed(db)
        async with AsyncSession(db.engine) as session, session.begin():  # a process killed before its seal
            events = [chain.NewEvent(actor="UREAL", action="partner.added", data={"n": n}) for n in (1, 2)]
            await chain.append(session, events, db.audit_key or b"")
        async with db.engine.begin() as conn:
            first, second = (await conn.execute(text("SELECT id FROM audit_pending ORDER BY id"))).scalars()
            await conn.execute(
                text("UPDATE audit_pending SET actor = 'UFORGER' WHERE id = :id"), {"id": second}
            )
            forged = await conn.scalar(
                text(
                    "INSERT INTO audit_pending (at, actor, action, request_id, data, mac) VALUES "
                    "('2020-01-01 00:00:00+00', 'U0OWNER', 'request.approved', 42, '{}', "
                    "(SELECT mac FROM audit_pending WHERE id = :id)) RETURNING id"
                ),
                {"id": first},  # a signature copied from a genuine row does not fit another's content
            )
        with caplog.at_level(logging.ERROR, logger="dpor"):
            await directory.add_partner(db, "7654321", "Fabrikam", actor="test")  # any write seals
            await directory.add_partner(db, "7654322", "Northwind", actor="test")  # and again
        async with db.read() as session:
            chained = (await session.execute(select(AuditEvent.actor, AuditEvent.data))).all()
            waiting = set((await session.scalars(select(AuditPending.id))).all())
        assert ("UREAL", {"n": 1}) in chained
        assert not [actor for actor, _ in chained if actor in ("UFORGER", "U0OWNER")]
        assert waiting == {second, forged}
        refusals = [r.getMessage() for r in caplog.records if "not written by dpor-bot" in r.getMessage()]
        assert len(refusals) == 1 and f"{second}, {forged}" in refusals[0], refusals

        result = await audit.verify(db)
        assert not result.ok and result.forged == (second, forged) and result.broken_seq is None
        assert f"id {second}, {forged}" in audit.forged_text(result.forged)
        async with db.engine.begin() as conn:  # the operator, having looked at them
            await conn.execute(text("DELETE FROM audit_pending"))
        assert (await audit.verify(db)).ok
    finally:
        await db.dispose()


async def test_an_unsigned_event_an_operator_checked_is_chained_by_audit_accept(pg: str) -> None:
    """An event left waiting without a signature (by a version before migration 0009, whose process died
    between its commit and its seal): verify names it; once the operator has checked it, `audit accept`
    has it chained, with `audit.accepted` after it naming it, and verify passes."""
    db = Database(pg)
    try:
        await seed(db)
        async with db.engine.begin() as conn:
            left = await conn.scalar(
                text(
                    "INSERT INTO audit_pending (at, actor, action, data) "
                    "VALUES (now(), 'U0OLD', 'partner.added', '{\"partner_id\": \"7654321\"}') RETURNING id"
                )
            )
        assert (await audit.verify(db)).forged == (left,)
        assert await audit.accept(db, [left, left + 100], "operator:me") == [left]
        assert await count(db, AuditPending) == 0
        async with db.read() as session:
            tail = (
                await session.execute(
                    select(AuditEvent.actor, AuditEvent.action, AuditEvent.data).order_by(AuditEvent.seq)
                )
            ).all()[-2:]
        assert [tuple(r) for r in tail] == [
            ("U0OLD", "partner.added", {"partner_id": "7654321"}),
            ("operator:me", "audit.accepted", {"pending_ids": [left]}),
        ]
        assert (await audit.verify(db)).ok
    finally:
        await db.dispose()
