"""Engine and sessions: read and write units of work on SQLite (WAL) or PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# Every transaction that appends to the audit chain holds this PostgreSQL advisory lock, so
# chain appends (and the state checks before them) are serialised across processes.
CHAIN_LOCK_KEY = 0x44504F52  # "DPOR"
# Where a write session carries the audit chain's key (`Database.audit_key`) for `audit_key_of`.
_AUDIT_KEY = "dpor_audit_key"


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own BEGIN, so writes can take the lock up front.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on the disk before the caller (and Slack) hears it succeeded; under WAL,
        # NORMAL could lose the last commits to a power cut. It costs an fsync per commit (~0.4 ms here).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writes take the write lock up front. Reads run in autocommit: each statement sees the
        # newest commit, and a read costs no BEGIN/ROLLBACK round trips through aiosqlite's thread
        # (each about half a millisecond here).
        if conn.get_execution_options().get("dpor_write", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """One engine per process; `read()` and `write()` are the units of work the services use.

    `audit_key` is the secret the audit chain's hashes are keyed with (HMAC-SHA256). The database never
    holds it: the bot sets it at start (bot.audit_keys), and a write session carries it for the chain.
    """

    audit_key: bytes | None = None

    def __init__(self, url: str, *, echo: bool = False, audit_key: bytes | None = None) -> None:
        self.url = url
        if audit_key is not None:
            self.audit_key = audit_key
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            # Connections go back idle: writes always end in COMMIT or ROLLBACK, reads autocommit.
            kwargs.update(pool_reset_on_return=None)
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
        self.engine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._reader = async_sessionmaker(self.engine, expire_on_commit=False)
        self._writer = async_sessionmaker(
            self.engine.execution_options(dpor_write=True), expire_on_commit=False
        )
        # SQLite has one writer at a time; queueing in-process is cheaper than its busy loop.
        self._write_lock: asyncio.Lock | None = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._reader() as session:
            yield session

    @asynccontextmanager
    async def write(self, *, chain: bool = True) -> AsyncIterator[AsyncSession]:
        """A transaction that commits on success and rolls back on any exception.

        `chain=True` serialises it with every other audited write (needed before appending to
        the audit chain); outbox bookkeeping passes `chain=False`.
        """
        if self.is_sqlite:
            if self._write_lock is None:
                self._write_lock = asyncio.Lock()
            async with self._write_lock, self._writer() as session, session.begin():
                session.info[_AUDIT_KEY] = self.audit_key
                yield session
        else:
            async with self._writer() as session, session.begin():
                session.info[_AUDIT_KEY] = self.audit_key
                if chain:
                    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
                yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


def audit_key_of(session: AsyncSession) -> bytes | None:
    """The audit key of the Database whose `write()` opened this session (None: not loaded)."""
    return session.info.get(_AUDIT_KEY)
