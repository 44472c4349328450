"""The in-loop SQLite driver (storage/sqlite.py) behaves as SQLAlchemy's async API promises: every way
of executing works, rows are buffered at execute, errors are SQLAlchemy's, and nothing leaves the
loop's thread."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError

from storage.db import Database
from storage.models import Partner

_partners = Partner.__table__


@pytest.fixture
async def sqlite_db(sqlite_url: str) -> AsyncIterator[Database]:
    db = Database(sqlite_url)
    try:
        yield db
    finally:
        await db.dispose()


async def test_an_async_connection_executes_one_statement_and_many(sqlite_db: Database) -> None:
    assert await sqlite_db.ping()  # AsyncConnection.execute insists on an awaited driver call
    async with sqlite_db.engine.begin() as conn:
        await conn.execute(
            insert(_partners), [{"partner_id": f"P{i}", "name": f"Partner {i}"} for i in range(3)]
        )
        await conn.exec_driver_sql("UPDATE partners SET name = 'Renamed' WHERE partner_id = 'P1'")
    async with sqlite_db.read() as session:
        rows = (
            await session.execute(select(_partners.c.partner_id, _partners.c.name).order_by("partner_id"))
        ).all()
    assert [tuple(r) for r in rows] == [("P0", "Partner 0"), ("P1", "Renamed"), ("P2", "Partner 2")]


async def test_rows_are_read_at_execute_so_a_later_write_does_not_change_them(sqlite_db: Database) -> None:
    async with sqlite_db.engine.begin() as conn:
        await conn.execute(insert(_partners), [{"partner_id": f"P{i}", "name": "old"} for i in range(5)])
        result = await conn.execute(select(_partners.c.partner_id, _partners.c.name).order_by("partner_id"))
        await conn.execute(text("UPDATE partners SET name = 'new'"))
        first = result.fetchone()
        rest = result.fetchmany(2) + result.fetchall()
    assert first is not None and tuple(first) == ("P0", "old")
    assert [tuple(r) for r in rest] == [(f"P{i}", "old") for i in range(1, 5)]


async def test_a_failing_statement_raises_sqlalchemys_error_and_rolls_back(sqlite_db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with sqlite_db.write() as session:
            await session.execute(insert(_partners).values(partner_id="P1", name="first"))
            await session.execute(insert(_partners).values(partner_id="P1", name="again"))
    async with sqlite_db.read() as session:
        assert (await session.scalars(select(_partners.c.partner_id))).all() == []


async def test_statements_run_in_the_loops_own_thread(sqlite_db: Database) -> None:
    seen: list[int] = []
    async with sqlite_db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        raw.driver_connection._conn.create_function(
            "thread_id", 0, lambda: seen.append(threading.get_ident()) or 1
        )
        assert (await conn.execute(text("SELECT thread_id()"))).scalar() == 1
    assert seen == [threading.get_ident()]


async def test_a_statement_outside_sqlalchemys_greenlet_is_refused_before_it_runs(
    sqlite_db: Database,
) -> None:
    async with sqlite_db.engine.connect() as conn:
        with pytest.raises(Exception, match="greenlet_spawn has not been called"):
            conn.sync_connection.execute(insert(_partners).values(partner_id="P1", name="x"))
    async with sqlite_db.read() as session:
        assert (await session.scalars(select(_partners.c.partner_id))).all() == []


async def test_streaming_is_refused_plainly(sqlite_db: Database) -> None:
    async with sqlite_db.engine.connect() as conn:
        with pytest.raises(InvalidRequestError, match="server side cursors"):
            await conn.stream(select(_partners))
