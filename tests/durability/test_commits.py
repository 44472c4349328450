"""What a commit promises: on SQLite it is on the disk (synchronous=FULL) before anyone hears of it; on
PostgreSQL a commit that wrote outbox rows wakes every listening worker (NOTIFY dpor_outbox), a rollback
wakes none, and a listener whose connection is cut reconnects."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from storage import notify
from storage import outbox as table
from storage.db import Database

ROW = {"kind": "notify", "key": "channel:C1", "payload": {"channel": "C1"}}


async def test_sqlite_commits_are_durable(database_url: str) -> None:
    db = Database(database_url)
    try:
        if not db.is_sqlite:
            pytest.skip("a PostgreSQL commit is durable by default (synchronous_commit=on)")
        async with db.read() as session:
            assert (await session.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
        async with db.write(serial=False) as session:
            assert (await session.execute(text("PRAGMA synchronous"))).scalar() == 2
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await db.dispose()


async def test_postgresql_synchronous_commit_is_on(database_url: str) -> None:
    db = Database(database_url)
    try:
        if db.is_sqlite:
            pytest.skip("PostgreSQL only")
        async with db.read() as session:
            assert (await session.execute(text("SHOW synchronous_commit"))).scalar() == "on"
    finally:
        await db.dispose()


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, within: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), within)
            return True
        except TimeoutError:
            return False
        finally:
            self.event.clear()


async def test_a_commit_with_outbox_rows_wakes_listeners_and_a_rollback_does_not(database_url: str) -> None:
    writer, listener = Database(database_url), Database(database_url)  # two processes' engines
    wakes = Wakes()
    try:
        async with notify.listen(listener, wakes):
            if listener.is_sqlite:
                async with writer.write(serial=False) as session:
                    await table.insert_rows(session, [ROW])
                assert not await wakes.next(0.3)  # SQLite: one process, it wakes its own worker
                return
            assert await wakes.next()  # once on connecting: rows may have come while nobody listened
            with pytest.raises(RuntimeError):
                async with writer.write(serial=False) as session:
                    await table.insert_rows(session, [ROW])
                    raise RuntimeError("rolled back")
            assert not await wakes.next(0.5)
            async with writer.write(serial=False) as session:
                await table.insert_rows(session, [ROW])
                await table.insert_rows(session, [])  # no rows: no notification of its own
                assert not await wakes.next(0.3)  # not before the commit
            assert await wakes.next(1.0)
            async with writer.write(serial=False) as session:
                await table.insert_rows(session, [])
            assert not await wakes.next(0.3)
    finally:
        await writer.dispose()
        await listener.dispose()


async def test_a_listener_whose_connection_is_cut_reconnects(database_url: str) -> None:
    writer, listener = Database(database_url), Database(database_url)
    if writer.is_sqlite:
        pytest.skip("PostgreSQL only")
    wakes = Wakes()
    try:
        async with notify.listen(listener, wakes):
            assert await wakes.next()
            async with writer.write(serial=False) as session:
                cut = await session.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                )
                assert cut.scalars().all() == [True]
            assert await wakes.next(3.0)  # reconnected, and woke once in case rows came meanwhile
            async with writer.write(serial=False) as session:
                await table.insert_rows(session, [ROW])
            assert await wakes.next(1.0)
    finally:
        await writer.dispose()
        await listener.dispose()
