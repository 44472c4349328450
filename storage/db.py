"""Engine and sessions: read and write units of work on SQLite (WAL) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_

from storage import audit as chain
from storage import direct, readmodel, sqlite
from storage.groups import GroupCommit

# A serial write (the default) holds this PostgreSQL advisory lock: the rare writes whose checks read
# across rows (roles and the last-owner guard, the directory, checkpoints, re-keying) run one at a time
# across processes. A request's own transactions (`serial=False`: set, the clicks, apply) do not take
# it: they lock their request's row and rely on the one-open-request index. Neither holds the chain's
# lock (storage.audit.CHAIN_LOCK_KEY): events are chained by the sealer after the commit.
SERIAL_LOCK_KEY = 0x44504F53  # "DPOS"
# Where a write session carries the audit chain's key (`Database.audit_key`) for `audit_key_of`.
_AUDIT_KEY = "dpor_audit_key"
# Where a write session notes that it wrote outbox rows (storage.notify.notify_outbox): once it has
# committed, the process's worker is woken (`Database.on_outbox`), whatever code wrote them.
OUTBOX_WRITTEN = "dpor_outbox_written"
# Where it notes that it sent PostgreSQL's NOTIFY for them: a process listening hears its own NOTIFY, so
# its worker is woken by that alone, once per commit (see `_committed`).
OUTBOX_NOTIFIED = "dpor_outbox_notified"


# Connections a process keeps open (DPOR_DB_POOL_SIZE), and how many more it may open for a burst.
# Sessions overlap: a request's session is still checked out while its close yields to the event loop,
# and the worker delivers DPOR_OUTBOX_CONCURRENCY rows at once. A pool smaller than that overlap opens
# and closes a connection for almost every session under load (on SQLite its PRAGMAs, on PostgreSQL a
# new server backend), which cost a third of `show`'s throughput here (README: Performance).
POOL_SIZE = 30
POOL_OVERFLOW = 10


# A PostgreSQL write that need not wait for the disk (`Database.write(durable=False)`).
_ASYNC_COMMIT = text("SET LOCAL synchronous_commit TO OFF")

# How long a write waits for another process's write lock (the CLI, another tool) before it fails.
WRITE_LOCK_WAIT = 30.0
# SQLite's own busy handler blocks the thread it runs on, here the event loop: keep it short. A read
# under WAL waits only in rare cases (recovery after a crash); writers wait in `_begin_immediate`.
BUSY_TIMEOUT_MS = 200


def _begin_immediate(conn: Any) -> None:
    """BEGIN IMMEDIATE without SQLite's busy handler: while another process holds the write lock, sleep
    on the event loop (other requests go on) and try again, for up to WRITE_LOCK_WAIT seconds. The
    statements go straight to the driver (storage.sqlite): SQLAlchemy's round for each would cost more
    than a short transaction's own statements. Errors come out as SQLAlchemy's, as they would through it."""
    raw = conn.connection.driver_connection
    deadline = time.monotonic() + WRITE_LOCK_WAIT
    delay = 0.001
    sqlite.run(raw, "PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                sqlite.run(raw, "BEGIN IMMEDIATE")
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                    raise
            await_(asyncio.sleep(delay))
            delay = min(delay * 2, 0.05)
    finally:
        sqlite.run(raw, f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        sqlite.configure(dbapi_connection.driver_connection.driver, BUSY_TIMEOUT_MS)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writes take the write lock up front. Reads run in autocommit: each statement sees the
        # newest commit and costs no BEGIN/ROLLBACK.
        if conn.get_execution_options().get("dpor_write", False):
            _begin_immediate(conn)


class Database:
    """One engine per process; `read()` and `write()` are the units of work the services use.

    `audit_key` is the secret the audit chain's hashes are keyed with (HMAC-SHA256). The database never
    holds it: the bot sets it at start (bot.audit_keys), and a write session carries it for the chain.
    """

    audit_key: bytes | None = None

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        audit_key: bytes | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.url = url
        if audit_key is not None:
            self.audit_key = audit_key
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "pool_size": pool_size, "max_overflow": POOL_OVERFLOW}
        if self.is_sqlite:
            # Connections go back idle: writes always end in COMMIT or ROLLBACK, reads autocommit.
            kwargs.update(pool_reset_on_return=None)
        else:
            kwargs.update(pool_pre_ping=True)
        if self.is_sqlite:
            # The standard driver in the event loop's thread (storage.sqlite), not aiosqlite's thread.
            engine_url: Any = make_url(url).set(drivername=sqlite.DRIVER)
        else:
            engine_url = url
        self.engine = create_async_engine(engine_url, **kwargs)
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            self.engine.execution_options(dpor_write=True), expire_on_commit=False
        )
        # Partners, roles and watches in memory, checked against the version row on each use.
        self.model = readmodel.ReadModel()
        self.groups: GroupCommit | None = None
        # SQLite: the connection read sessions read from directly (storage.direct), opened at the first
        # read. (A database in memory, where another connection would see another database, takes no
        # pool arguments: `Database` refuses it.)
        self._direct_url = engine_url if self.is_sqlite else None
        self._direct: direct.Reader | None = None
        self._seal_lock: asyncio.Lock | None = None
        self._seal_wanted = self._seal_done = 0
        self._seal_ids: set[int] = set()
        self._seal_everything = False
        self._outbox_wakers: list[Callable[[], None]] = []
        # PostgreSQL: LISTEN connections of this process that are up (storage.notify.listen).
        self.listening = 0
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            self.groups = GroupCommit(self.engine.execution_options(dpor_write=True), self._carry_key)

    def _carry_key(self, session: AsyncSession) -> None:
        session.info[_AUDIT_KEY] = self.audit_key
        readmodel.attach(session, self.model)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        if not self.is_sqlite:
            async with self._reader() as session:
                readmodel.attach(session, self.model, once=True)
                yield session
            return
        # SQLAlchemy's `async with` closes a session in a task of its own (a close must not be abandoned
        # halfway); on SQLite's in-loop driver a close never suspends (no reset on return, the driver's
        # calls are direct), so nothing can abandon it: closed in this task, about 70 us less a read.
        session = self._reader()
        try:
            readmodel.attach(session, self.model, once=True)
            if self._direct_url is not None:
                reader = self._direct or self._open_direct()
                if reader is not None:
                    session.info[direct.CONNECTION] = reader
            yield session
        finally:
            await session.close()

    @asynccontextmanager
    async def write(
        self, *, serial: bool = True, seal: bool = True, durable: bool = True
    ) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on any exception.

        On SQLite it runs in a group of the transactions that arrive together (storage.groups): one
        COMMIT for all, and `write()` returns once that COMMIT is on the disk. On PostgreSQL, `serial`
        (the default) runs it one at a time with the other serial writes of every process (see
        SERIAL_LOCK_KEY); the audit events it wrote are chained by the sealer before `write()` returns,
        unless `seal` is False: then the caller seals them (`seal(unsealed(session))`), and a seal that
        fails is not mistaken for a failed commit.

        `durable=False`, for a write whose loss to a power cut (never to a crash of the process) costs
        nothing, as a claim of outbox rows (delivered at least once anyway) or a replay guard's sighting
        (the request's own write, durable, follows it): its COMMIT does not wait for the disk (SQLite:
        a group of its own kind, storage.groups; PostgreSQL: `synchronous_commit` off for it). It is on
        the disk with the next durable commit.
        """
        if self.groups is not None:
            async with self.groups.transaction(durable=durable) as session:
                yield session
            self._committed(session)
            return
        async with self._writer() as session:
            async with session.begin():
                self._carry_key(session)
                if not durable:
                    await session.execute(_ASYNC_COMMIT)
                if serial:
                    lock = text("SELECT pg_advisory_xact_lock(:key)")
                    await session.execute(lock, {"key": SERIAL_LOCK_KEY})
                yield session
            unsealed = session.info.get(chain.UNSEALED)
        self._committed(session)
        if unsealed and seal:
            await self.seal(unsealed)

    def on_outbox(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` after every commit in this process that wrote outbox rows (other processes hear
        of theirs through storage.notify); returns what undoes it."""
        self._outbox_wakers.append(wake)
        return lambda: self._outbox_wakers.remove(wake)

    def _committed(self, session: AsyncSession) -> None:
        if session.info.get(OUTBOX_WRITTEN):
            if session.info.get(OUTBOX_NOTIFIED) and self.listening:
                return  # its NOTIFY reaches this process too, through the LISTEN connection: one wake
            for wake in list(self._outbox_wakers):
                wake()

    async def seal(self, ids: Iterable[int] = ()) -> None:
        """PostgreSQL: chain the events committed so far (storage.audit.seal); `ids`: the pending events
        the caller needs chained (none: everything committed before the call). Callers that arrive while
        a seal runs share the next one; while another process seals, its seal may chain ours: a caller
        waits for that rather than queueing behind it for the chain lock."""
        if self.is_sqlite or self.audit_key is None:
            return
        if self._seal_lock is None:
            self._seal_lock = asyncio.Lock()
        self._seal_wanted += 1
        ticket = self._seal_wanted
        ids = set(ids)
        everything = not ids
        self._seal_everything |= everything
        self._seal_ids |= ids
        async with self._seal_lock:
            if self._seal_done >= ticket:
                return  # a seal that began after this caller's commit covered it
            upto, wanted, everything = self._seal_wanted, self._seal_ids, self._seal_everything
            self._seal_ids, self._seal_everything = set(), False
            delay = 0.001
            while True:
                async with self._writer() as session, session.begin():
                    if await chain.try_seal(session, self.audit_key):
                        break
                    if not everything and not await chain.still_pending(session, wanted):
                        break  # another process's seal chained them
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.02)
            self._seal_done = upto

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def _open_direct(self) -> direct.Reader | None:
        """The connection direct reads use, opened as the pool opens one (the URL's arguments, the same
        PRAGMAs) but outside it, kept until `dispose`; never in a transaction (the driver's autocommit,
        as every read). Opening a local file takes microseconds: done on the loop. If it cannot be
        opened, this read goes through the pool and the next one tries again."""
        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self._direct_url)
        try:
            conn = sqlite3.connect(*args, **{**kwargs, "check_same_thread": False})
            try:
                sqlite.configure(conn, BUSY_TIMEOUT_MS)
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error:
            return None
        self._direct = direct.Reader(conn, dialect)
        return self._direct

    async def dispose(self) -> None:
        if self.groups is not None:
            await self.groups.settle()  # a COMMIT still in its thread (storage.groups) ends first
        reader, self._direct = self._direct, None
        if reader is not None:
            reader.conn.close()
        await self.engine.dispose()


@asynccontextmanager
async def savepoint(session: AsyncSession) -> AsyncIterator[None]:
    """A SAVEPOINT inside a write, rolled back alone on an exception. Begun at once, not at the session's
    next statement: the statements run straight on the connection (storage.direct) must be inside it."""
    async with session.begin_nested():
        await session.connection()
        yield


def unsealed(session: AsyncSession) -> list[int]:
    """The audit events a `write(seal=False)` committed that wait for the sealer (PostgreSQL)."""
    return list(session.info.get(chain.UNSEALED) or ())


def audit_key_of(session: AsyncSession) -> bytes | None:
    """The audit key of the Database whose `write()` opened this session (None: not loaded)."""
    return session.info.get(_AUDIT_KEY)
