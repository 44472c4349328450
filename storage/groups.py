"""Group commit on SQLite: write transactions that arrive together share one COMMIT (one fsync).

SQLite has one writer at a time, and with `synchronous=FULL` each COMMIT waits for the disk. Here the
transactions of one process queue at a gate; the first opens a group (`BEGIN IMMEDIATE` on one
connection), and each runs inside a SAVEPOINT of it, so a transaction that fails rolls back alone and
the others keep their work. When a transaction ends and nobody waits at the gate (after letting the
requests already in the event loop's queue reach it), the group commits; every member's `write()`
returns only once that COMMIT is on the disk, so nothing a caller was told is lost to `kill -9` or a
power cut. A COMMIT that fails fails every member's `write()`: none of the group's work was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from storage import direct, sqlite

# A group commits after this many transactions even while more wait: bounds the first one's wait.
MAX_GROUP = 64


class _Group:
    __slots__ = ("committed", "conn", "direct", "durable", "raw", "size")

    def __init__(self, conn: AsyncConnection, raw: Any, durable: bool) -> None:
        self.conn = conn
        self.raw = raw  # its connection's driver wrapper (storage.sqlite): PRAGMAs go straight to it
        self.durable = durable
        # Its connection's driver, where its transactions' hot statements run directly (storage.direct).
        self.direct = direct.Reader(raw.driver, conn.dialect)
        self.size = 0
        self.committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class GroupCommit:
    """`transaction()` yields a session inside the current group; see the module's docstring."""

    def __init__(self, engine: AsyncEngine, prepare: Callable[[AsyncSession], None]) -> None:
        self._engine = engine
        self._prepare = prepare
        self._gate: asyncio.Lock | None = None
        self._waiting = 0
        self._group: _Group | None = None
        self._closers: set[asyncio.Task[None]] = set()  # `_commit_left` tasks under way
        self._commits: set[asyncio.Task[None]] = set()  # COMMITs under way in the thread (`_commit`)
        self.commits = 0  # COMMITs issued: tests and the benchmark read it to see groups form
        self.transactions = 0

    @asynccontextmanager
    async def transaction(self, *, durable: bool = True) -> AsyncIterator[AsyncSession]:
        """`durable=False`: a transaction whose loss to a power cut costs nothing (a claim, a lease, a
        replay guard's sighting) may commit without waiting for the disk; see `_open`."""
        if self._gate is None:
            self._gate = asyncio.Lock()
        self._waiting += 1
        try:
            await self._gate.acquire()
        except BaseException:
            self._waiting -= 1
            self._handed_to_nobody()
            raise
        self._waiting -= 1
        try:
            group = self._group
            if group is not None and durable and not group.durable:
                await self._commit(group)  # a durable transaction never joins a group that skips the disk
                group = None
            if group is None:
                group = self._group = await self._open(durable)
            session = AsyncSession(
                bind=group.conn, join_transaction_mode="create_savepoint", expire_on_commit=False
            )
            session.info[direct.WRITER] = group.direct
            self._prepare(session)
        except BaseException:
            self._gate.release()
            raise
        try:
            try:
                async with session.begin():  # SAVEPOINT; RELEASE, or ROLLBACK TO on an exception
                    # The SAVEPOINT now, not at the session's first statement: the statements run straight
                    # on the connection (storage.direct) must be inside it, to roll back with it.
                    await session.connection()
                    yield session
            finally:
                await session.close()
        except BaseException:
            await self._leave(group)
            raise
        group.size += 1
        self.transactions += 1
        await self._leave(group)
        await asyncio.shield(group.committed)

    async def _open(self, durable: bool) -> _Group:
        """A new group: a connection in BEGIN IMMEDIATE. A group of transactions none of which needs it
        durable commits with `synchronous=NORMAL` (SQLite lets a connection change it only between
        transactions): no fsync. Under WAL its frames reach the disk with the next durable COMMIT's
        fsync, which covers the whole log before it, and a `kill -9` loses nothing either way; only a
        power cut before that can lose them. Transactions that need durability open groups of their own
        (`transaction`), and every group's connection goes back to the pool with `synchronous=FULL`."""
        conn = await self._engine.connect()
        try:
            raw = (await conn.get_raw_connection()).driver_connection
            if not durable:
                sqlite.run(raw, "PRAGMA synchronous=NORMAL")
            await conn.begin()  # BEGIN IMMEDIATE (storage.db)
        except BaseException:
            if not durable:
                await conn.invalidate()  # never back to the pool with synchronous=NORMAL
            await conn.close()
            raise
        return _Group(conn, raw, durable)

    async def _leave(self, group: _Group) -> None:
        """Hand the group to the next transaction waiting at the gate, or commit it."""
        assert self._gate is not None
        cancelled: asyncio.CancelledError | None = None
        try:
            if group.size < MAX_GROUP:
                try:
                    await asyncio.sleep(0)  # requests already queued in the loop reach the gate now
                except asyncio.CancelledError as exc:
                    cancelled = exc  # the group is still handed on or committed, then this task stops
                if self._waiting:
                    return
            await self._commit(group)
        finally:
            self._gate.release()
            if cancelled is not None:
                raise cancelled

    async def _commit(self, group: _Group) -> None:
        """COMMIT the group (the caller holds the gate) and tell its members how it went.

        With `synchronous=FULL` a COMMIT waits for the disk (an fsync: 0.2 ms here, several on a busy
        disk). When the event loop has other work ready, the COMMIT waits in a thread (storage.sqlite.
        commit) and the loop answers other requests meanwhile; in a task of its own, so that a caller
        cancelled then (shutdown) does not leave it halfway, its members never told and its connection
        in use by the thread. When nothing else is ready it runs here: handing it to a thread and back
        costs more than the fsync (two thread wake-ups, about 0.3 ms on this 2-core virtual machine).
        """
        self._group = None
        if not sqlite.loop_busy():
            await self._finish(group, threaded=False)
            return
        task = asyncio.create_task(self._finish(group, threaded=True), name="dpor-group-commit")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
        await asyncio.shield(task)

    async def settle(self) -> None:
        """Wait for the COMMITs under way in the thread. At shutdown the transaction that issued one may
        have been cancelled and gone; `Database.dispose` waits for them here, or it would close the engine
        while the thread still commits, and that connection would go back to the disposed pool afterwards,
        left open."""
        while self._commits:
            await asyncio.wait(set(self._commits))

    async def _finish(self, group: _Group, *, threaded: bool) -> None:
        try:
            if threaded:
                await sqlite.commit(group.raw)
            await group.conn.commit()  # after a threaded COMMIT, SQLAlchemy's bookkeeping only
        except Exception as exc:
            # SQLite leaves the transaction open after a failed COMMIT (a deferred constraint, a full
            # disk) while SQLAlchemy considers it over: drop the connection (closing it rolls the
            # transaction back) rather than hand it back to the pool.
            await group.conn.invalidate()
            # Every member that returned from its body learns it here; a group of failed ones has
            # nothing to lose.
            if group.size:
                group.committed.set_exception(exc)
            else:
                group.committed.set_result(None)
        else:
            self.commits += 1
            group.committed.set_result(None)
            if not group.durable:
                try:
                    sqlite.run(group.raw, "PRAGMA synchronous=FULL")
                except Exception:
                    await group.conn.invalidate()  # never back to the pool with synchronous=NORMAL
        finally:
            await group.conn.close()

    def _handed_to_nobody(self) -> None:
        """A transaction left the gate without passing it (cancelled while it waited). If the gate was
        being handed to it with the group open, and nobody else waits, nobody would commit that group:
        its members would wait for ever and its connection would hold SQLite's write lock. Commit it in a
        task of its own."""
        assert self._gate is not None
        if self._group is None or self._waiting or self._gate.locked():
            return
        task = asyncio.create_task(self._commit_left(), name="dpor-group-commit")
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _commit_left(self) -> None:
        assert self._gate is not None
        async with self._gate:
            # A transaction that reached the gate first used the group and committed it, or handed it on
            # to one that will: then there is nothing left to do here.
            if self._group is not None and not self._waiting:
                await self._commit(self._group)
