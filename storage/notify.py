"""A commit that wrote outbox rows wakes the workers: this process's at once, every other one's through
PostgreSQL's LISTEN/NOTIFY on `dpor_outbox`.

`notify_outbox` runs inside the transaction that writes the rows: it marks the session (the Database
wakes this process's worker once the session has committed, `Database.on_outbox`) and, on PostgreSQL,
NOTIFYs, which PostgreSQL delivers only when (and if) the transaction commits. `listen(db, callback)`
calls `callback` after this process's commits and, on PostgreSQL, holds one connection of its own that
LISTENs and calls `callback` on each notification; when that connection drops it reconnects with backoff
and calls `callback` once more (notifications sent while it was away are lost, the rows are not).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import OUTBOX_WRITTEN, Database
from storage.models import is_postgresql

CHANNEL = "dpor_outbox"
CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0

log = logging.getLogger("dpor.notify")


async def notify_outbox(session: AsyncSession) -> None:
    """Tell this process's worker and every listening process, at this transaction's commit, that outbox
    rows are due."""
    session.info[OUTBOX_WRITTEN] = True
    if is_postgresql(session):
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def _dsn(db: Database) -> str:
    """The database's URL as asyncpg reads it (SQLAlchemy's driver name dropped)."""
    return db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@asynccontextmanager
async def listen(db: Database, callback: Callable[[], None]) -> AsyncIterator[None]:
    """While the block runs, call `callback` after each commit of this process that wrote outbox rows and,
    on PostgreSQL, on each `dpor_outbox` notification from any process."""
    undo = db.on_outbox(callback)
    try:
        if db.is_sqlite:
            yield
            return
        task = asyncio.create_task(_listen_forever(_dsn(db), callback), name="dpor-outbox-listen")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        undo()


async def _listen_forever(dsn: str, callback: Callable[[], None]) -> None:
    delay = BACKOFF_FIRST
    while True:
        try:
            await _listen_once(dsn, callback)
            delay = BACKOFF_FIRST  # it was connected: start the backoff over
            log.warning("the connection listening for new outbox rows closed; reconnecting in %.1fs", delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "cannot listen for new outbox rows (%s); the worker polls meanwhile, trying again in %.1fs",
                type(exc).__name__,
                delay,
            )
        await asyncio.sleep(delay)
        delay = min(BACKOFF_CAP, delay * 2)


async def _listen_once(dsn: str, callback: Callable[[], None]) -> None:
    """LISTEN on one connection until it closes."""
    import asyncpg

    conn: Any = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, lambda *_args: callback())
        callback()  # rows committed while this process was not listening
        await lost.wait()
    finally:
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
