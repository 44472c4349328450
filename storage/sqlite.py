"""SQLite in the event loop's own thread: SQLAlchemy's aiosqlite dialect over the standard driver, no thread.

aiosqlite sends every call (open a cursor, execute, fetch, close) to a thread of its own and back, so
one statement costs several thread hops and, under load, waits for the GIL each time. An indexed
statement on a local SQLite file takes microseconds, far less than one hop. Here the same SQLAlchemy
dialect drives a `sqlite3` connection directly: each driver call is a coroutine that has finished by
the time it is awaited, so SQLAlchemy's greenlet switch is the only cost and the event loop never
waits. What can block is bounded: waiting for another process's write lock is done by the caller
with `asyncio.sleep` (`storage.db`), never by SQLite's busy handler on the loop.

The URL stays `sqlite+aiosqlite://...` everywhere a person sees it; `storage.db.Database` builds its
engine on the `sqlite+dpor` dialect registered here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.exc import DBAPIError

DRIVER = "sqlite+dpor"


class _Cursor:
    """aiosqlite's cursor interface over a `sqlite3.Cursor`; every coroutine completes without waiting."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> _Cursor:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


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
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> _Cursor:
        return _Cursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        return await _Cursor(self._conn.cursor()).execute(sql, parameters)

    def run(self, sql: str) -> None:
        """A statement with no parameters and no rows (BEGIN, a PRAGMA) straight to the driver."""
        self._conn.execute(sql)

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


class _DBAPI(AsyncAdapt_aiosqlite_dbapi):
    def __init__(self) -> None:
        # sqlite3 carries every name SQLAlchemy reads from aiosqlite (errors, versions).
        super().__init__(sqlite3, sqlite3)

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        kw.pop("async_creator_fn", None)
        # The pool may close a connection from the garbage collector's thread; nothing else crosses.
        kw["check_same_thread"] = False
        return AsyncAdapt_aiosqlite_connection(self, _Connection(sqlite3.connect(*arg, **kw)))


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
