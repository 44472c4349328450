"""Direct writes (storage/direct.py `lane`): on SQLite a write's hot statements run straight on its group's
connection, inside its SAVEPOINT. They write exactly what the same statements through SQLAlchemy write
(defaults, JSON, aware times), see the transaction's own changes, roll back with it alone, fail as
SQLAlchemy's errors, and step aside while the session holds a change not yet flushed. On both engines
(PostgreSQL runs every statement through the session: the same assertions hold there)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError

from storage import audit, direct, prepared, requests
from storage import outbox as table
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, Partner, utcnow
from tests.storage.test_requests import SUB
from tests.storage.test_requests import new_request as a_request

KEY = b"k" * 32
LEASE = timedelta(minutes=1)


@pytest.fixture(params=["direct", "sqlalchemy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of running a write's statements: directly (SQLite), and through the session."""
    if request.param == "sqlalchemy":
        monkeypatch.setattr(direct, "lane", lambda session: None)
    return str(request.param)


def columns(instance: Any, *leave_out: str) -> dict[str, Any]:
    keys = [prop.key for prop in inspect(type(instance)).column_attrs if prop.key not in leave_out]
    return {key: getattr(instance, key) for key in keys}


async def test_a_write_runs_its_hot_statements_on_its_own_connection(db: Database) -> None:
    await a_request(db)
    async with db.write() as session:
        lane = direct.lane(session)
        assert (lane is not None) == db.is_sqlite
        if lane is not None:  # the group's connection: the one the session's own statements run on
            raw = (await (await session.connection()).get_raw_connection()).driver_connection
            assert lane.conn is raw.driver


async def test_what_a_write_writes_directly_is_what_sqlalchemy_writes(db: Database, path: str) -> None:
    """Rows with their Python defaults, JSON and aware times; a decision; the audit chain; a claim and
    an outcome; a conditional move. Read back through the session on both paths."""
    db.audit_key = KEY  # PostgreSQL's sealer chains the events after the commit
    rid = await a_request(db)
    before = utcnow()
    async with db.write() as session:
        await table.insert_rows(
            session,
            [{"kind": "dm", "key": "dm:U1", "payload": {"n": ["é", 1]}}, {"kind": "dm", "key": "dm:U2"}],
        )
        await requests.add_decision(session, rid, "UOWNER", "approve")
        assert await requests.decision_of(session, rid, "UOWNER") == "approve"  # its own change, seen
        assert [who for who, _ in await requests.approvals(session, rid)] == ["UOWNER"]
        await audit.append(session, [audit.NewEvent("UOWNER", "request.approved", rid, SUB, {"x": 1})], KEY)
        await audit.append(session, [audit.NewEvent("UOWNER", "apply.started", rid, SUB, None)], KEY)
        req = await requests.get(session, rid)
        assert req is not None
        assert await requests.move(session, req, "pending", "approved", decided_by="UOWNER")
        assert not await requests.move(session, req, "pending", "rejected")  # moved already
        assert (req.status, req.decided_by) == ("approved", "UOWNER")
    async with db.write(serial=False) as session:
        first, _ = await table.claim(session, "w", LEASE, 10, skip_locked=not db.is_sqlite)
        held = await table.claim(session, "w2", LEASE, 10, skip_locked=not db.is_sqlite, held=[first.id])
        assert held == []  # both claimed already
        settled = await table.settle(session, first.id, "w", table.DONE, key="dm:U1", delivered_at=utcnow())
        assert settled == table.Settled(True, False)
    async with db.write() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))).all()
        decided = await requests.get(session, rid)
    assert [
        columns(r, "id", "available_at", "created_at", "delivered_at", "claimed_until") for r in rows
    ] == [
        {"kind": "dm", "key": "dm:U1", "payload": {"n": ["é", 1]}, "status": "done", "attempts": 1}
        | {"claimed_by": None, "last_error": None},
        {"kind": "dm", "key": "dm:U2", "payload": {}, "status": "pending", "attempts": 1}
        | {"claimed_by": "w", "last_error": None},
    ]
    for r in rows:
        assert before <= r.available_at <= utcnow() and r.created_at.utcoffset() == timedelta(0)
    assert rows[0].delivered_at is not None and rows[1].claimed_until is not None
    assert [(e.seq, e.action, e.data) for e in events][-2:] == [
        (events[-2].seq, "request.approved", {"x": 1}),
        (events[-2].seq + 1, "apply.started", {}),
    ]
    assert events[-1].prev_hash == events[-2].hash
    assert decided is not None and (decided.status, decided.decided_by) == ("approved", "UOWNER")


async def test_what_a_failed_write_wrote_directly_is_rolled_back_alone(db: Database) -> None:
    rid = await a_request(db)

    async def fails() -> None:
        async with db.write(serial=False) as session:
            await table.insert_rows(session, [{"kind": "dm", "key": "dm:lost"}])
            await requests.add_decision(session, rid, "ULOST", "approve")
            await audit.append(session, [audit.NewEvent("ULOST", "request.approved", rid, SUB, None)], KEY)
            await asyncio.sleep(0)  # the other transaction joins the group meanwhile
            raise RuntimeError("boom")

    async def commits() -> None:
        async with db.write(serial=False) as session:
            await table.insert_rows(session, [{"kind": "dm", "key": "dm:kept"}])

    results = await asyncio.gather(fails(), commits(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError) and results[1] is None
    async with db.read() as session:
        keys = (await session.scalars(select(OutboxMessage.key))).all()
        assert await requests.approvals(session, rid) == []
        assert await requests.decision_of(session, rid, "ULOST") is None
        assert (await session.scalars(select(AuditEvent).where(AuditEvent.actor == "ULOST"))).all() == []
    assert keys == ["dm:kept"]


async def test_a_direct_statement_fails_as_sqlalchemys_error_and_the_write_rolls_back(
    db: Database, path: str
) -> None:
    rid = await a_request(db)
    async with db.write() as session:
        await requests.add_decision(session, rid, "UOWNER", "approve")
    with pytest.raises(IntegrityError):
        async with db.write() as session:
            await table.insert_rows(session, [{"kind": "dm", "key": "dm:U9"}])
            await requests.add_decision(session, rid, "UOWNER", "reject")  # one decision each
    async with db.read() as session:
        assert await requests.decision_of(session, rid, "UOWNER") == "approve"
        assert (await session.scalars(select(OutboxMessage))).all() == []


async def test_a_change_not_yet_flushed_is_written_before_any_direct_statement(db: Database) -> None:
    """The ORM writes a pending object before a statement that might depend on it; a direct statement
    would not, so the session takes the statement itself until nothing waits to be flushed."""
    rid = await a_request(db)
    async with db.write() as session:
        session.add(Partner(partner_id="7654321", name="Fabrikam"))
        assert direct.lane(session) is None
        # A move through the session flushes the partner first: its row is there in the same transaction.
        req = await requests.get(session, rid)
        assert req is not None
        assert await prepared.update_where(
            session, ChangeRequest.__table__, {"id": rid}, {"partner_id": "7654321"}
        )
        assert (direct.lane(session) is not None) == db.is_sqlite  # flushed: nothing waits any more
        assert await session.scalar(select(Partner.name).where(Partner.partner_id == "7654321")) == "Fabrikam"
    async with db.read() as session:
        found = await requests.with_subscription(session, rid)
    assert found is not None and found[0].partner_id == "7654321"


async def test_after_a_failed_flush_a_direct_statement_writes_nothing(db: Database) -> None:
    """A flush that fails rolls the session's transaction back (on SQLite its SAVEPOINT): SQLAlchemy then
    refuses every statement until the block ends. A statement run directly must not go on writing
    behind its back, into a transaction its group commits as if this write had succeeded."""
    async with db.write() as session:
        session.add(Partner(partner_id="7654321", name="Fabrikam"))
    with pytest.raises(InvalidRequestError):  # what SQLAlchemy says of any later statement
        async with db.write() as session:
            session.add(Partner(partner_id="7654321", name="Fabrikam again"))
            with pytest.raises(IntegrityError):
                await session.flush()
            await table.insert_rows(session, [{"kind": "dm", "key": "dm:after-the-rollback"}])
    async with db.read() as session:
        assert (await session.scalars(select(OutboxMessage.key))).all() == []


async def test_a_write_that_has_ended_has_no_lane(db: Database) -> None:
    """Once `write()` returns, its group's connection is no longer the session's: it may be committing in
    the thread (storage.groups), back in the pool, or another group's."""
    async with db.write() as session:
        assert (direct.lane(session) is not None) == db.is_sqlite
    assert direct.lane(session) is None


async def test_a_value_its_type_refuses_fails_as_sqlalchemys_error(db: Database, path: str) -> None:
    """A bind processor's error (a naive time for a UTCDateTime column) is SQLAlchemy's StatementError
    through the session; so it is when the statement runs directly, and nothing is written."""
    rid = await a_request(db)
    naive = datetime(2026, 1, 1)
    with pytest.raises(StatementError, match="naive datetime"):
        async with db.write() as session:
            await table.insert_rows(session, [{"kind": "dm", "key": "dm:U1", "available_at": naive}])
    with pytest.raises(StatementError, match="naive datetime"):
        async with db.write() as session:
            await prepared.update_where(session, ChangeRequest.__table__, {"id": rid}, {"reminded_at": naive})
    async with db.read() as session:
        assert (await session.scalars(select(OutboxMessage))).all() == []
