"""A request's conditional move (storage/requests.py `move`): one UPDATE ... RETURNING where the database
has it, the UPDATE and a read of the row where it has not; either way the caller's object is the row as
it is now, and a move someone else made first is refused; a request and its subscription are read
in one statement. On both engines."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, update

from bot.directory import SubscriptionRow, upsert_subscriptions
from storage import prepared, queries, requests
from storage.db import Database
from storage.models import ChangeRequest, utcnow

SUB = "11111111-2222-3333-4444-555555555555"


async def new_request(db: Database, **values: Any) -> int:
    """A pending request for SUB (`values`: other columns); its number."""
    await upsert_subscriptions(db, [SubscriptionRow(SUB, "Production", "prod")], actor="test")
    async with db.write() as session:
        req = await requests.insert(
            session,
            team_id="T1",
            subscription_id=SUB,
            partner_id="1234567",
            requester_id="UADMIN",
            expires_at=utcnow() + timedelta(days=1),
            **values,
        )
        return req.id


@pytest.fixture(params=[True, False], ids=["returning", "update-then-read"])
def returning(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of a move: UPDATE ... RETURNING, and the UPDATE then a read (SQLite before 3.35)."""
    if not request.param:
        monkeypatch.setattr(prepared, "can_return", lambda session: False)
    return bool(request.param)


async def test_a_move_updates_the_row_and_the_callers_object(db: Database, returning: bool) -> None:
    rid = await new_request(db)
    result = {"partner_id": "1234567", "identity": "ledger"}
    async with db.write() as session:
        req = await requests.get(session, rid, lock=True)
        assert req is not None
        assert await requests.move(session, req, "pending", "approved", decided_by="UOWNER")
        assert (req.status, req.decided_by) == ("approved", "UOWNER")
        assert await requests.move(session, req, "approved", "applied", result=result, apply_attempts=1)
        # The object is the row: JSON and times come back as the model's types, not raw driver values.
        assert (req.status, req.result, req.apply_attempts) == ("applied", result, 1)
        assert req.updated_at.tzinfo is not None and req.updated_at >= req.created_at
    async with db.read() as session:
        again = await requests.get(session, rid)
        assert again is not None
        assert (again.status, again.decided_by, again.result) == ("applied", "UOWNER", result)


async def test_a_move_someone_made_first_is_refused_and_shows_theirs(db: Database, returning: bool) -> None:
    rid = await new_request(db)
    async with db.read() as session:
        stale = await requests.get(session, rid)
    assert stale is not None and stale.status == "pending"
    async with db.write() as session:
        first = await requests.get(session, rid, lock=True)
        assert first is not None
        assert await requests.move(session, first, "pending", "rejected", decided_by="UOTHER")
    async with db.write() as session:
        session.add(stale)  # the object as the caller last saw it: pending
        assert not await requests.move(session, stale, "pending", "approved", decided_by="UOWNER")
        assert (stale.status, stale.decided_by) == ("rejected", "UOTHER")  # who decided first
    async with db.read() as session:
        row = await requests.get(session, rid)
        assert row is not None and (row.status, row.decided_by) == ("rejected", "UOTHER")


async def test_a_request_and_its_subscription_come_in_one_read(db: Database) -> None:
    rid = await new_request(db)
    async with db.read() as session:
        found = await requests.with_subscription(session, rid)
        assert found is not None
        req, sub = found
        assert (req.id, req.subscription_id, req.status) == (rid, SUB, "pending")
        assert (sub.id, sub.name, sub.alias) == (SUB, "Production", "prod")
        assert await requests.with_subscription(session, rid + 1000) is None


async def test_the_open_request_is_found_by_a_statement_whose_sql_is_never_rewritten(db: Database) -> None:
    """`open_for` and `show`'s overview find a subscription's request while it is pending, approved or
    applying and not once it is applied; the SQL the driver receives is the statement as compiled once
    (no IN list SQLAlchemy expands anew at every execution). A write session runs them through SQLAlchemy
    on both engines (a read session on SQLite reads the overview from the driver: storage.direct)."""
    rid = await new_request(db)
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        for status in ("pending", "approved", "applying", "applied"):
            async with db.write() as session:
                move = update(ChangeRequest).where(ChangeRequest.id == rid).values(status=status)
                await session.execute(move)
            expected = None if status == "applied" else rid
            for unit in (db.read, db.write):
                sent.clear()
                async with unit() as session:
                    found = await requests.open_for(session, SUB)
                    overview = await queries.subscription_overview(session, "prod")
                assert overview is not None
                open_request = overview[2]
                assert found is None if expected is None else found.id == expected
                assert open_request is None if expected is None else open_request.id == expected
            dialect = db.engine.dialect
            compiled = {str(s.compile(dialect=dialect)) for s in (requests._OPEN_FOR, queries._OVERVIEW)}
            assert {s for s in sent if "pg_advisory_xact_lock" not in s} == compiled, sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)
