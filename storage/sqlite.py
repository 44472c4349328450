"""SQLite in the event loop's own thread: SQLAlchemy's aiosqlite dialect over the standard driver, no thread.

aiosqlite sends every call (open a cursor, execute, fetch, close) to a thread of its own and back, so
one statement costs several thread hops and, under load, waits for the GIL each time. An indexed
statement on a local SQLite file takes microseconds, far less than one hop. Here the same SQLAlchemy
dialect drives a `sqlite3` connection directly, and its adapter calls the driver without leaving its
greenlet: opening and closing a cursor, a commit and a rollback are plain calls, and a statement
makes one greenlet switch (SQLAlchemy's `AsyncConnection.execute` insists on one, its proof that the
driver is asynchronous), where SQLAlchemy's own adapter makes three and takes a lock. The event loop
never waits: what can block is bounded, and waiting for another process's write lock is done by the
caller with `asyncio.sleep` (`storage.db`), never by SQLite's busy handler on the loop.

The URL stays `sqlite+aiosqlite://...` everywhere a person sees it; `storage.db.Database` builds its
engine on the `sqlite+dpor` dialect registered here.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

DRIVER = "sqlite+dpor"
# Python's str.lower as an SQL function on every connection (storage.db): SQLite's lower() folds ASCII only.
LOWER = "dpor_lower"


class _Done:
    """Stands for aiosqlite's queue to its thread: the function runs at once, here."""

    __slots__ = ()

    def put_nowait(self, item: tuple[Any, Any]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)


class _Connection:
    """aiosqlite's connection interface over a `sqlite3.Connection` (the attributes SQLAlchemy reads)."""

    __slots__ = ("_conn", "_connection", "_tx")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._connection = conn  # aiosqlite's "still open" marker, read by SQLAlchemy's adapter
        self._tx = _Done()

    @property
    def driver(self) -> sqlite3.Connection:
        """The `sqlite3` connection itself (storage.direct reads from it)."""
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def run(self, sql: str) -> None:
        """A statement with no parameters and no rows (BEGIN, a PRAGMA) straight to the driver."""
        self._conn.execute(sql)

    def commit(self) -> None:
        """COMMIT on the driver, from whichever thread calls it (`commit` below)."""
        self._conn.commit()

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


async def _switch() -> None:
    """Awaited once per statement: the greenlet switch `AsyncConnection.execute` requires."""


class _Rows(AsyncAdapt_aiosqlite_cursor):
    """SQLAlchemy's aiosqlite cursor adapter calling the `sqlite3` cursor directly: its rows are read at
    execute, as that adapter buffers them; opening and closing it switch no greenlet, a statement one."""

    __slots__ = ()
    _awaitable_cursor_close = False

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = adapt_connection._connection._conn.cursor()
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()

    # The switch comes first: outside a greenlet it raises before anything is written.
    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> None:
        await_(_switch())
        cursor = self._cursor
        cursor.execute(sql, () if parameters is None else parameters)
        if cursor.description:
            self._rows = collections.deque(cursor.fetchall())

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> None:
        await_(_switch())
        cursor = self._cursor
        cursor.executemany(sql, parameters)
        if cursor.description:
            self._rows = collections.deque(cursor.fetchall())

    def close(self) -> None:
        self._rows.clear()
        self._cursor.close()


class _Adapted(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection adapter with `_Rows` for cursors (server-side ones included: the
    dialect says it has none) and a commit and a rollback called directly, not through `await_`."""

    __slots__ = ()

    def cursor(self, server_side: bool = False) -> Any:
        return _Rows(self)

    def commit(self) -> None:
        if self._connection._connection:
            self._connection.commit()

    def rollback(self) -> None:
        if self._connection._connection:
            self._connection._conn.rollback()


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self) -> None:
        # sqlite3 carries every name SQLAlchemy reads from aiosqlite (errors, versions).
        super().__init__(sqlite3, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        kw.pop("async_creator_fn", None)
        # The pool may close a connection from the garbage collector's thread; nothing else crosses.
        kw["check_same_thread"] = False
        return _Adapted(self, _Connection(sqlite3.connect(*arg, **kw)))


def _lower(text: Any) -> Any:
    return text.lower() if isinstance(text, str) else text


def configure(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """What every connection to the database runs first (the pool's, and storage.direct's reader)."""
    # Autocommit on the driver: SQLAlchemy's "begin" event owns BEGIN (storage.db), so writes can take
    # the lock up front, and a read holds no transaction between its statements.
    conn.isolation_level = None
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on the disk before the caller (and Slack) hears it succeeded; under WAL,
    # NORMAL could lose the last commits to a power cut. It costs an fsync per commit (~0.3 ms here),
    # shared by the transactions of a group (storage.groups).
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # SQLite's own lower() folds ASCII only, so the typeahead's case-blind search (storage.search)
    # missed `Électricité` for `élec`; Python's, as PostgreSQL's in a UTF-8 locale, folds every letter.
    # Under a name of its own: it costs a Python call per row, and only a needle beyond ASCII needs it.
    conn.create_function(LOWER, 1, _lower, deterministic=True)


# The thread COMMITs run in (`commit`): one, since a process has one writer at a time (storage.groups).
_COMMITTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dpor-sqlite-commit")


def loop_busy() -> bool:
    """Whether the running event loop has callbacks ready to run besides the caller (asyncio's own loop
    keeps them in `_ready`; another loop: answered False, and COMMITs stay on the loop as before)."""
    return bool(getattr(asyncio.get_running_loop(), "_ready", None))


async def commit(raw: Any) -> None:
    """COMMIT the transaction open on the driver connection `raw` (a `_Connection`) in a thread: the
    driver releases the GIL while SQLite waits for the disk, so the event loop goes on meanwhile.
    SQLAlchemy's own commit afterwards finds no transaction open and sends nothing. The caller must not
    touch the connection before this returns; errors come out as SQLAlchemy's.

    A caller cancelled meanwhile (asyncio.run cancels every task as the loop ends) still waits here for
    the thread, as an inline COMMIT cannot be interrupted either: the thread goes on with the connection
    whatever the caller does, so returning at once would have it rolled back or handed to the pool under
    the thread, and the COMMIT's outcome lost to those waiting for it. The cancellation is asked for again
    once the thread is done: the caller stops at its next await, or its task ends cancelled."""
    thread = asyncio.get_running_loop().run_in_executor(_COMMITTER, raw.commit)
    cancelled = False
    while not thread.done():
        try:
            await asyncio.wait((thread,))  # unlike awaiting it, leaves the future alone if cancelled
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()  # the one cancellation, delivered once more: not counted twice (asyncio.timeout)
        task.cancel()
    try:
        thread.result()
    except sqlite3.Error as exc:
        raise DBAPIError.instance("COMMIT", None, exc, sqlite3.Error) from exc


def run(raw: Any, sql: str) -> None:
    """A statement with no parameters and no rows straight to the driver connection `raw` (a
    `_Connection`); errors come out as SQLAlchemy's, as they would through it."""
    try:
        raw.run(sql)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc


class SQLiteInLoop(SQLiteDialect_aiosqlite):
    driver = "dpor"
    supports_statement_cache = True
    supports_server_side_cursors = False  # every cursor reads its rows at execute

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    # Savepoints straight to the driver: SQLAlchemy compiles its SAVEPOINT statements anew each time
    # (they are not cached), and every write runs in one (storage.groups), so that was two compilations
    # per transaction, more than its short statements cost. SQLAlchemy's savepoint events still fire.
    def do_savepoint(self, connection: Any, name: str) -> None:
        run(connection.connection.driver_connection, f"SAVEPOINT {self._savepoint(name)}")

    def do_release_savepoint(self, connection: Any, name: str) -> None:
        run(connection.connection.driver_connection, f"RELEASE SAVEPOINT {self._savepoint(name)}")

    def do_rollback_to_savepoint(self, connection: Any, name: str) -> None:
        run(connection.connection.driver_connection, f"ROLLBACK TO SAVEPOINT {self._savepoint(name)}")

    def _savepoint(self, name: str) -> str:
        return str(self.identifier_preparer.quote(name))


registry.register("sqlite.dpor", __name__, "SQLiteInLoop")
