"""A commit that wrote outbox rows wakes the workers: this process's at once, every other one's through
PostgreSQL's LISTEN/NOTIFY on `dpor_outbox`.

`notify_outbox` runs inside the transaction that writes the rows: it marks the session (the Database
wakes this process's worker once the session has committed, `Database.on_outbox`) and, on PostgreSQL,
NOTIFYs, which PostgreSQL delivers only when (and if) the transaction commits. `listen(db, callback)`
calls `callback` after this process's commits and, on PostgreSQL, holds one connection of its own that
LISTENs and calls `callback` on each notification; when that connection drops (or stops answering: it is
asked every PING_EVERY seconds) it reconnects with backoff and calls `callback` once more (notifications
sent while it was away are lost, the rows are not).

Once per commit: while its LISTEN connection is up, a process hears its own NOTIFY, and the Database
leaves the wake to it. A delivery's own commits (`DELIVERING`: an apply's start and result, a card's
record) send none: the rows they write are the delivering process's to claim when the delivery ends,
on PostgreSQL as on SQLite, and no other process is woken for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import OUTBOX_NOTIFIED, OUTBOX_WRITTEN, Database
from storage.models import is_postgresql

CHANNEL = "dpor_outbox"
CONNECT_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
# A LISTEN connection cut without a word (a NAT or firewall that drops idle flows, Azure's after 4 minutes;
# a failover that leaves the old address behind) never ends by itself: the listener asks the server this
# often whether it is still there, which also keeps such a flow from looking idle, and takes a question
# unanswered for PING_TIMEOUT as a lost connection.
PING_EVERY, PING_TIMEOUT = 60.0, 10.0

log = logging.getLogger("dpor.notify")

# True in a delivery's context (the outbox worker sets it): its commits NOTIFY nobody (see above).
DELIVERING: ContextVar[bool] = ContextVar("dpor_outbox_delivering", default=False)


async def notify_outbox(session: AsyncSession) -> None:
    """Tell this process's worker and every listening process, at this transaction's commit, that outbox
    rows are due."""
    session.info[OUTBOX_WRITTEN] = True
    if is_postgresql(session) and not DELIVERING.get():
        await session.execute(_NOTIFY, {"channel": CHANNEL})
        session.info[OUTBOX_NOTIFIED] = True


_NOTIFY = text("SELECT pg_notify(:channel, '')")


# Arguments of the URL that SQLAlchemy's asyncpg dialect keeps for itself rather than hand to the driver.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn")


def _connect_args(db: Database) -> dict[str, Any]:
    """asyncpg.connect's arguments for the database, as the engine makes its own connections: the URL's
    query holds the driver's arguments (`ssl=require`, `command_timeout`), which asyncpg would read in a
    DSN as server settings, and the server refuses (`parameter "ssl" cannot be changed now`)."""
    _, kwargs = db.engine.dialect.create_connect_args(db.engine.url)  # all by name
    for name in _DIALECT_ONLY:
        kwargs.pop(name, None)
    kwargs.setdefault("timeout", CONNECT_TIMEOUT)
    return kwargs


@asynccontextmanager
async def listen(db: Database, callback: Callable[[], None]) -> AsyncIterator[None]:
    """While the block runs, call `callback` after each commit of this process that wrote outbox rows and,
    on PostgreSQL, on each `dpor_outbox` notification from any process."""
    undo = db.on_outbox(callback)
    try:
        if db.is_sqlite:
            yield
            return
        task = asyncio.create_task(_listen_forever(db, callback), name="dpor-outbox-listen")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        undo()


async def _listen_forever(db: Database, callback: Callable[[], None]) -> None:
    delay = BACKOFF_FIRST
    while True:
        try:
            await _listen_once(db, callback)
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


async def _listen_once(db: Database, callback: Callable[[], None]) -> None:
    """LISTEN on one connection until it closes; meanwhile this process's commits wake it through it."""
    import asyncpg

    conn: Any = await asyncpg.connect(**_connect_args(db))
    listening = False
    try:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, lambda *_args: callback())
        db.listening += 1
        listening = True
        callback()  # rows committed while this process was not listening
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_EVERY)
                break
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), PING_TIMEOUT)
            except TimeoutError:
                # Nothing comes back: nothing it sends would either, this process's NOTIFYs included.
                log.warning("the connection listening for new outbox rows stopped answering")
                conn.terminate()
                return
            except Exception as exc:
                # Lost while asked (a NAT that forgot the flow answers with a reset), not between two
                # questions: it was up all the same, so it is replaced at once, not after a backoff.
                log.warning("the connection listening for new outbox rows was lost (%s)", type(exc).__name__)
                return
    finally:
        if listening:
            db.listening -= 1
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)
