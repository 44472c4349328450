"""SQLite's hot statements straight to its driver: the reads of `show` and of every card, DM and notice,
and a write's hot statements inside its group's transaction.

A read through SQLAlchemy's async session costs about 0.2 ms before its first statement (a connection
from the pool, the session's transaction, its close) and 50-100 us a statement (the session, the
compiled cache's lookup, the result's rows and, for an entity, the ORM's loading); the statement itself
takes SQLite 5-30 us. A `Database.read()` on SQLite therefore carries one connection of its own, held
out of the pool for the process and never in a transaction (each statement reads the newest commit, as
every read session's statements did), and the hot reads run on it directly: a `Query` is a Core SELECT
compiled once, its parameters and rows passed through the same type processors SQLAlchemy uses (so an
aware datetime, a JSON payload come back as they would), its entities built as the ORM would load them.
A read session that never asks for anything else never takes a connection from the pool at all.

A write on SQLite runs in a SAVEPOINT of its group's transaction (storage.groups), on one connection;
its hot statements (the UPDATEs of `storage.prepared`, the outbox's and the audit chain's INSERTs, the
claim, the version row) run directly on that connection too, inside the same transaction: `lane`. Only
while the session holds no change of its own not yet flushed (SQLAlchemy would write it before the
statement; this path would not), and never for an entity a write may change (it must belong to the
session): those reads stay with the session. PostgreSQL runs everything through the session, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Executable, Table, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import instance_state

# Where a read session carries the driver connection it may read from directly (storage.db), and where a
# write session carries its group's (storage.groups).
CONNECTION = "dpor_direct"
WRITER = "dpor_direct_writer"

Processor = Callable[[Any], Any] | None


class _Compiled:
    __slots__ = ("binds", "compiled", "defaults", "expanding", "names", "processors", "results", "sql")

    def __init__(self, statement: Executable, dialect: Dialect, keys: Sequence[str] | None) -> None:
        compiled: Any = statement.compile(dialect=dialect, column_keys=keys)
        self.compiled = compiled
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        processors = self.processors = compiled._bind_processors
        self.binds: tuple[Processor, ...] = tuple(processors.get(name) for name in self.names)
        # An `IN` of a list given at each call (an expanding parameter): its SQL is written per call.
        self.expanding = bool(compiled.post_compile_params)
        # Values fixed when the statement was built (`prepared.one_of`'s literals, a LIMIT given a value).
        self.defaults: dict[str, Any] = compiled.construct_params(_check=False)
        self.results: tuple[Processor, ...] = tuple(
            entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns
        )


class Query:
    """A Core statement (a SELECT of columns, not entities; an UPDATE; an INSERT of the columns `keys`)
    compiled once for SQLite's dialect on first use."""

    __slots__ = ("_compiled", "keys", "statement")

    def __init__(self, statement: Executable, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.keys = keys
        self._compiled: _Compiled | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled(self.statement, dialect, self.keys)
        return self._compiled


@cache
def query(statement: Executable) -> Query:
    """The `Query` of a statement built once elsewhere (one per statement object)."""
    return Query(statement)


class Reader:
    """A driver connection statements run on directly, and the dialect whose type processors turn their
    parameters and rows."""

    __slots__ = ("conn", "dialect")

    def __init__(self, conn: sqlite3.Connection, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect


def reader(session: AsyncSession) -> Reader | None:
    """Where this session may read rows and entities directly, or None: run the statement through the
    session (a write, PostgreSQL, a session no `Database.read()` opened)."""
    return session.info.get(CONNECTION)


def lane(session: AsyncSession) -> Reader | None:
    """Where this session may run a statement that loads no entity directly: a read session's reader, or a
    write session's own connection while nothing of the session waits to be flushed; else None."""
    found = session.info.get(CONNECTION)
    if found is not None:
        # A read writes nothing; should anything be added to it, the session flushes it itself first.
        return found if session.sync_session._is_clean() else None
    found = session.info.get(WRITER)
    if found is None:
        return None
    # Only inside the session's own transaction while it is active: not once a failed flush has rolled it
    # back (SQLAlchemy refuses every statement then), nor once the write has ended (the connection may be
    # committing in the thread, or another group's).
    sync = session.sync_session
    transaction = sync._transaction
    if transaction is not None and transaction.is_active and sync._is_clean():
        return found
    return None


def _values(compiled: _Compiled, params: Mapping[str, Any]) -> list[Any]:
    given = _given(compiled, params)
    return [
        given[name] if bind is None else bind(given[name])
        for name, bind in zip(compiled.names, compiled.binds, strict=True)
    ]


def _given(compiled: _Compiled, params: Mapping[str, Any]) -> Mapping[str, Any]:
    """The call's parameters with the values fixed when the statement was built."""
    return {**compiled.defaults, **params} if compiled.defaults else params


def _statement(compiled: _Compiled, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The SQL to send and its parameters, each through its type's processor."""
    if not compiled.expanding:
        return compiled.sql, _values(compiled, params)
    given = _given(compiled, params)
    expanded = compiled.compiled.construct_expanded_state(given)
    processors = {**compiled.processors, **expanded.processors}
    values = [
        value if (bind := processors.get(name)) is None else bind(value)
        for name, value in zip(expanded.positiontup, expanded.positional_parameters, strict=True)
    ]
    return expanded.statement, values


def _run(reader: Reader, compiled: _Compiled, params: Mapping[str, Any], fetch: bool) -> Any:
    """The statement's rows (`fetch`) or the rows it changed. The rows are fetched inside: SQLite reads a
    SELECT's first row at execute and the others as they are fetched, and an error may come on any."""
    try:
        sql, values = _statement(compiled, params)
    except Exception as exc:
        raise _refused(compiled.sql, params, exc) from exc
    try:
        cursor = reader.conn.execute(sql, values)
        return cursor.fetchall() if fetch else cursor.rowcount
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, values, exc, sqlite3.Error) from exc


def _refused(sql: str, params: Any, exc: Exception) -> Exception:
    """A value a type's processor refused (a naive time, a payload JSON cannot write), or a parameter
    missing: SQLAlchemy's StatementError, as the same statement through the session raises."""
    return DBAPIError.instance(sql, params, exc, sqlite3.Error)


def count(reader: Reader, query: Query, params: Mapping[str, Any]) -> int:
    """Run an UPDATE or a DELETE; the rows it changed."""
    return int(_run(reader, query.compiled(reader.dialect), params, fetch=False))


def rows(reader: Reader, query: Query, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """`query`'s rows (a SELECT's, or what a RETURNING returns), each value as SQLAlchemy would give it.
    Errors come out as SQLAlchemy's."""
    compiled = query.compiled(reader.dialect)
    found: list[tuple[Any, ...]] = _run(reader, compiled, params, fetch=True)
    processors = compiled.results
    if not any(processors):
        return found
    return [
        tuple(value if proc is None else proc(value) for proc, value in zip(processors, row, strict=True))
        for row in found
    ]


class Entity:
    """Builds instances of a mapped class from a run of a row's values, as the ORM's loading would (the
    instance's state made, its columns set as loaded), without a session: detached, as every instance a
    read session loaded is once the read ends (its identity set: added to a session, it is an UPDATE,
    never a second INSERT)."""

    __slots__ = ("_cls", "_keys", "_new", "_pk", "columns")

    def __init__(self, cls: type) -> None:
        mapper: Any = inspect(cls)
        attrs = list(mapper.column_attrs)
        self._cls = cls
        self._keys = tuple(prop.key for prop in attrs)
        self.columns = tuple(prop.columns[0] for prop in attrs)  # select these, in this order
        self._pk = tuple(self.columns.index(column) for column in mapper.primary_key)
        self._new = mapper.class_manager.new_instance

    def build(self, values: Sequence[Any]) -> Any:
        instance = self._new()
        instance.__dict__.update(zip(self._keys, values, strict=True))
        instance_state(instance).key = (self._cls, tuple(values[i] for i in self._pk), None)
        return instance

    @property
    def width(self) -> int:
        return len(self._keys)


def insert(reader: Reader, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT rows that all name the same columns, in order; a column a row leaves out takes its Python
    default (`default=`), computed for each row as SQLAlchemy does, or its server default."""
    shape = _insert_shape(table, tuple(sorted(rows[0])))
    compiled = shape.query.compiled(reader.dialect)
    try:
        batch = [_values(compiled, shape.complete(row)) for row in rows]
    except Exception as exc:
        raise _refused(compiled.sql, rows, exc) from exc
    try:
        reader.conn.executemany(compiled.sql, batch)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(compiled.sql, batch, exc, sqlite3.Error) from exc


class _InsertShape:
    __slots__ = ("callables", "query", "scalars")

    def __init__(self, table: Table, keys: tuple[str, ...]) -> None:
        self.scalars: dict[str, Any] = {}
        self.callables: dict[str, Callable[[Any], Any]] = {}
        for column in table.c:
            default = column.default
            if column.key in keys or default is None:
                continue
            if default.is_scalar:
                self.scalars[column.key] = default.arg  # type: ignore[attr-defined]
            elif default.is_callable:
                self.callables[column.key] = default.arg  # type: ignore[attr-defined]
            else:  # a SQL expression or a sequence: not a shape this path writes
                raise ValueError(f"{table.name}.{column.key}: a default this path does not compute")
        names = (*keys, *self.scalars, *self.callables)
        self.query = Query(table.insert(), keys=names)

    def complete(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        if not self.scalars and not self.callables:
            return row
        # SQLAlchemy calls a callable default with the execution context; ours take none (it passes it on
        # only to a function that asks for one).
        return {**row, **self.scalars, **{key: make(None) for key, make in self.callables.items()}}


@cache
def _insert_shape(table: Table, keys: tuple[str, ...]) -> _InsertShape:
    return _InsertShape(table, keys)
