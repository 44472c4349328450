"""Group commit on SQLite (storage/groups.py): transactions that arrive together share one COMMIT, a
failing one rolls back alone, a failed COMMIT fails every member, and neither waiting for another
process's write lock nor, while other work is ready, a COMMIT waiting for the disk stops the event loop;
a write that need not be durable skips the fsync in a group of its own kind (and, on PostgreSQL, turns
synchronous_commit off)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from unittest.mock import patch

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from storage import db as storage_db
from storage import directory
from storage import sqlite as storage_sqlite
from storage.db import Database
from storage.models import Partner


async def names(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.scalars(select(Partner.partner_id))).all())


async def add(db: Database, pid: str, *, fail: bool = False) -> None:
    async with db.write() as session:
        await directory.insert_partner(session, pid, f"Partner {pid}")
        await asyncio.sleep(0)  # a real request's body gives the loop back now and then
        if fail:
            raise ValueError(f"{pid} refused")


async def test_transactions_that_arrive_together_share_a_commit(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        assert db.groups is not None
        commits = db.groups.commits
        await asyncio.gather(*(add(db, f"{i:07d}") for i in range(40)))
        assert await names(db) == {f"{i:07d}" for i in range(40)}
        assert db.groups.commits - commits < 40 / 4  # forty transactions, a handful of fsyncs
    finally:
        await db.dispose()


async def test_a_failing_transaction_rolls_back_alone(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        results = await asyncio.gather(
            *(add(db, f"{i:07d}", fail=i % 3 == 0) for i in range(12)), return_exceptions=True
        )
        failed = {str(r) for r in results if isinstance(r, Exception)}
        assert failed == {f"{i:07d} refused" for i in range(0, 12, 3)}
        assert await names(db) == {f"{i:07d}" for i in range(12) if i % 3}
    finally:
        await db.dispose()


async def test_a_failed_commit_fails_every_member_and_writes_nothing(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        async with db.engine.begin() as conn:  # a foreign key SQLite checks only at COMMIT
            await conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
            await conn.execute(
                text(
                    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER "
                    "REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
                )
            )

        async def orphan() -> None:
            async with db.write() as session:
                await session.execute(text("INSERT INTO child (parent_id) VALUES (42)"))

        results = await asyncio.gather(
            add(db, "1111111"), orphan(), add(db, "2222222"), return_exceptions=True
        )
        assert all(isinstance(r, Exception) and "FOREIGN KEY" in str(r) for r in results), results
        assert await names(db) == set()
        await add(db, "3333333")  # the next group starts clean
        assert await names(db) == {"3333333"}
    finally:
        await db.dispose()


async def test_waiting_for_another_processs_write_lock_leaves_the_loop_free(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    path = sqlite_url.split("///", 1)[1]
    held, release = threading.Event(), threading.Event()

    def other_process() -> None:  # e.g. the CLI in the middle of a write
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO partners (partner_id, name, created_at) VALUES ('9999999', 'CLI', '2026-12-01')"
        )
        held.set()
        release.wait(10)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=other_process)
    thread.start()
    try:
        assert await asyncio.to_thread(held.wait, 10)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        write = asyncio.create_task(add(db, "1234567"))
        await asyncio.sleep(0.5)
        assert not write.done()  # still waiting for the lock...
        assert ticks >= 20  # ...while the loop kept running
        started = time.monotonic()
        release.set()
        await asyncio.wait_for(write, 5)
        assert time.monotonic() - started < 1
        tick_task.cancel()
        assert await names(db) == {"1234567", "9999999"}
    finally:
        release.set()
        thread.join()
        await db.dispose()


async def test_a_read_does_not_see_a_group_before_its_commit(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        async with db.write() as session:
            await directory.insert_partner(session, "7777777", "Uncommitted")
            assert await names(db) == set()  # another connection: only committed data
        assert await names(db) == {"7777777"}
    finally:
        await db.dispose()


async def test_a_database_error_at_begin_is_sqlalchemys_and_the_write_lock_wait_ends(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE goes to the driver directly; what fails there still comes out as SQLAlchemy's
    error (the CLI reports those in one line), and a lock held past the wait ends in OperationalError."""
    db = Database(sqlite_url)
    path = sqlite_url.split("///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock and keeps it
    try:
        with patch.object(storage_db, "WRITE_LOCK_WAIT", 0.2), pytest.raises(OperationalError) as locked:
            await add(db, "1234567")
        assert "locked" in str(locked.value.orig)
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    real_run = storage_sqlite._Connection.run

    def corrupt(self: storage_sqlite._Connection, sql: str) -> None:  # what a damaged file answers
        if sql == "BEGIN IMMEDIATE":
            raise sqlite3.DatabaseError("file is not a database")
        real_run(self, sql)

    try:
        with patch.object(storage_sqlite._Connection, "run", corrupt), pytest.raises(DBAPIError) as broken:
            await add(db, "1234568")
        assert broken.value.statement == "BEGIN IMMEDIATE"
        assert isinstance(broken.value.orig, sqlite3.DatabaseError)
        await add(db, "1234569")  # the connection went back usable
        assert await names(db) == {"1234569"}
    finally:
        await db.dispose()


async def test_a_group_handed_to_a_transaction_cancelled_at_the_gate_still_commits(sqlite_url: str) -> None:
    """A transaction that ends hands the open group to the next one waiting at the gate. If that one is
    cancelled before it runs (its request went away, shutdown), the group must still commit: the first
    one's `write()` returns, its work is on disk, and the connection goes back to the pool."""
    db = Database(sqlite_url)
    groups = db.groups
    assert groups is not None
    try:
        inside, finish = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with db.write() as session:
                await directory.insert_partner(session, "1000001", "First")
                inside.set()
                await finish.wait()

        task_first = asyncio.create_task(first())
        await inside.wait()
        task_second = asyncio.create_task(add(db, "1000002"))
        # Polled at each turn of the loop: the moments below have no event of their own.
        while not groups._waiting:  # noqa: ASYNC110  the second waits at the gate; the first holds the group
            await asyncio.sleep(0)

        async def cancel_once_handed_over() -> None:
            # The gate free and the group still open: the first handed it on; the second has not run yet.
            while groups._group is None or groups._gate is None or groups._gate.locked():  # noqa: ASYNC110
                await asyncio.sleep(0)
            task_second.cancel()

        watcher = asyncio.create_task(cancel_once_handed_over())
        finish.set()
        await asyncio.wait_for(task_first, 5)  # it waited for a COMMIT nobody would issue
        await watcher
        with pytest.raises(asyncio.CancelledError):
            await task_second
        assert await names(db) == {"1000001"}
        assert db.engine.pool.checkedout() == 0
        await add(db, "1000003")  # the gate works on
        assert await names(db) == {"1000001", "1000003"}
    finally:
        await db.dispose()


class _Disk:
    """A disk that takes `seconds` to sync each COMMIT (in whichever thread runs it), and the loop turns
    counted meanwhile by `spin`, a callback that always has itself ready to run (requests waiting)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.turns = 0
        self.turns_during: list[int] = []
        self.threads: list[threading.Thread] = []
        self.connections: list[sqlite3.Connection] = []
        self.spinning = False
        self._real = storage_sqlite._Connection.commit

    @contextlib.contextmanager
    def installed(self, *, busy: bool) -> Iterator[None]:
        """This disk under the driver's COMMIT; `busy`: the loop kept busy meanwhile (`spin`)."""
        with patch.object(storage_sqlite._Connection, "commit", lambda conn: self.commit(conn)):
            self.spinning = busy
            if busy:
                self.spin()
            try:
                yield
            finally:
                self.spinning = False

    def commit(self, conn: storage_sqlite._Connection) -> None:
        if not conn._conn.in_transaction:  # SQLAlchemy's commit after a threaded one: nothing to sync
            return
        self.threads.append(threading.current_thread())
        self.connections.append(conn._conn)
        before = self.turns
        time.sleep(self.seconds)  # the fsync: the GIL is free meanwhile, as the driver frees it
        self.turns_during.append(self.turns - before)
        self._real(conn)

    def spin(self) -> None:
        self.turns += 1
        if self.spinning:
            asyncio.get_running_loop().call_soon(self.spin)


async def test_while_other_work_is_ready_a_commit_waits_for_the_disk_off_the_loop(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    disk = _Disk(0.3)
    try:
        with disk.installed(busy=True):
            started = time.monotonic()
            await add(db, "1234567")
            elapsed = time.monotonic() - started
        assert disk.threads and threading.main_thread() not in disk.threads
        assert disk.turns_during[0] > 10  # the loop went on while the disk synced (0 on the loop's thread)
        assert elapsed >= 0.3  # and write() returned only once the COMMIT was done
        assert await names(db) == {"1234567"}
        assert db.engine.pool.checkedout() == 0
    finally:
        await db.dispose()


async def test_with_nothing_else_ready_a_commit_stays_on_the_loop(sqlite_url: str) -> None:
    """Handing a COMMIT to a thread and back costs two thread wake-ups, more than an fsync here: one
    request at a time, the COMMIT runs where the transaction ran."""
    db = Database(sqlite_url)
    disk = _Disk(0.01)
    try:
        with disk.installed(busy=False):
            await add(db, "1234567")
        assert disk.threads == [threading.main_thread()]
        assert await names(db) == {"1234567"}
    finally:
        await db.dispose()


async def test_a_member_cancelled_during_a_threaded_commit_leaves_its_group_committed(
    sqlite_url: str,
) -> None:
    """At shutdown a transaction may be cancelled while its group's COMMIT waits for the disk in a thread:
    the COMMIT goes on, the other members learn it succeeded, and the connection goes back to the pool
    only once the thread is done with it."""
    db = Database(sqlite_url)
    disk = _Disk(0.3)
    try:
        with disk.installed(busy=True):
            first = asyncio.create_task(add(db, "1000001"))
            second = asyncio.create_task(add(db, "1000002"))
            while not disk.threads:  # noqa: ASYNC110  polled: the COMMIT's start has no event of its own
                await asyncio.sleep(0.01)
            first.cancel()
            await asyncio.wait_for(second, 5)
            with pytest.raises(asyncio.CancelledError):
                await first
        assert len(disk.threads) == 1  # one COMMIT for both
        assert await names(db) == {"1000001", "1000002"}
        while db.groups is not None and db.groups._commits:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert db.engine.pool.checkedout() == 0
        await add(db, "1000003")  # the gate works on
        assert await names(db) == {"1000001", "1000002", "1000003"}
    finally:
        await db.dispose()


async def test_a_threaded_commit_cancelled_as_the_loop_ends_waits_for_its_thread(sqlite_url: str) -> None:
    """asyncio.run cancels every task as the loop ends, the group's COMMIT among them while its thread
    still commits: the connection is neither rolled back nor handed to the pool under the thread, and the
    members still waiting learn how the COMMIT went (they waited for ever, their work rolled back)."""
    db = Database(sqlite_url)
    disk = _Disk(0.3)
    try:
        assert db.groups is not None
        with disk.installed(busy=True):
            first = asyncio.create_task(add(db, "1000001"))
            second = asyncio.create_task(add(db, "1000002"))  # the group's last: it commits
            while not disk.threads:  # noqa: ASYNC110  polled: the COMMIT's start has no event of its own
                await asyncio.sleep(0.01)
            (commit,) = db.groups._commits
            commit.cancel()
            await asyncio.sleep(0.05)
            assert db.engine.pool.checkedout() == 1  # still the thread's
            await asyncio.wait_for(first, 5)
            with pytest.raises(asyncio.CancelledError):
                await second
            assert commit.cancelled()  # it stops, once the thread is done
        assert await names(db) == {"1000001", "1000002"}
        assert db.engine.pool.checkedout() == 0
    finally:
        await db.dispose()


async def test_dispose_waits_for_a_commit_whose_members_were_cancelled(sqlite_url: str) -> None:
    """At shutdown the requests still running are cancelled, the group's last one during its threaded
    COMMIT, then the database is closed: the COMMIT ends first, and its connection is closed with the
    others (it was left open in the disposed pool, the COMMIT still running after `dispose()`)."""
    db = Database(sqlite_url)
    disk = _Disk(0.3)
    with disk.installed(busy=True):
        tasks = [asyncio.create_task(add(db, pid)) for pid in ("1000001", "1000002")]
        while not disk.threads:  # noqa: ASYNC110  polled: the COMMIT's start has no event of its own
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.dispose()
        assert disk.turns_during  # the COMMIT is done
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        disk.connections[0].execute("SELECT 1")
    db = Database(sqlite_url)
    try:
        assert await names(db) == {"1000001", "1000002"}
    finally:
        await db.dispose()


async def synchronous(session: object) -> int:
    return int((await session.execute(text("PRAGMA synchronous"))).scalar_one())  # type: ignore[attr-defined]


async def test_a_write_that_need_not_be_durable_commits_without_waiting_for_the_disk(sqlite_url: str) -> None:
    """Its group commits with synchronous=NORMAL (no fsync; the next durable COMMIT's fsync covers it);
    a durable write never joins such a group but opens its own with FULL, and every connection goes back
    to the pool with FULL."""
    db = Database(sqlite_url)
    groups = db.groups
    assert groups is not None
    seen: dict[str, int] = {}
    entered = asyncio.Event()

    async def claim() -> None:
        async with db.write(serial=False, durable=False) as session:
            await directory.insert_partner(session, "1000001", "Claimed")
            seen["claim"] = await synchronous(session)
            entered.set()
            await asyncio.sleep(0.01)  # the durable write arrives at the gate meanwhile

    async def durable() -> None:
        await entered.wait()
        async with db.write() as session:
            await directory.insert_partner(session, "1000002", "Durable")
            seen["durable"] = await synchronous(session)

    try:
        before = groups.commits
        await asyncio.gather(claim(), durable())
        assert seen == {"claim": 1, "durable": 2}  # NORMAL, FULL: two groups
        assert groups.commits - before == 2
        assert await names(db) == {"1000001", "1000002"}
        # A write that need not be durable may join a durable group: it then waits for the disk too.
        async with db.write() as session:
            inner = asyncio.ensure_future(_not_durable(db, seen))
            await asyncio.sleep(0)
            seen["outer"] = await synchronous(session)
        await inner
        assert (seen["outer"], seen["joined"]) == (2, 2)
        for _ in range(3):  # whichever connection the pool hands out next
            async with db.write() as session:
                assert await synchronous(session) == 2
    finally:
        await db.dispose()


async def _not_durable(db: Database, seen: dict[str, int]) -> None:
    async with db.write(durable=False) as session:
        seen["joined"] = await synchronous(session)


async def test_a_write_that_need_not_be_durable_on_postgresql_turns_synchronous_commit_off(
    pg_url: str,
) -> None:
    db = Database(pg_url)
    try:
        for durable, expected in ((False, "off"), (True, "on")):
            async with db.write(durable=durable) as session:
                assert (await session.execute(text("SHOW synchronous_commit"))).scalar_one() == expected
    finally:
        await db.dispose()
