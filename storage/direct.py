"""Reads straight from SQLite's driver: the hot reads of `show` and of every card, DM and notice.

A read through SQLAlchemy's async session costs about 0.2 ms before its first statement (a connection
from the pool, the session's transaction, its close) and 50-100 us a statement (the session, the
compiled cache's lookup, the result's rows and, for an entity, the ORM's loading); the statement itself
takes SQLite 5-30 us. A `Database.read()` on SQLite therefore carries one connection of its own, held
out of the pool for the process and never in a transaction (each statement reads the newest commit, as
every read session's statements did), and the hot reads run on it directly: a `Query` is a Core SELECT
compiled once, its parameters and rows passed through the same type processors SQLAlchemy uses (so an
aware datetime, a JSON payload come back as they would), its entities built as the ORM would load them.
A read session that never asks for anything else never takes a connection from the pool at all.

Only reads of committed rows take this path: a write session (its own uncommitted changes must be seen)
and PostgreSQL run the same statement through the session, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Select, inspect
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import instance_state

# Where a read session carries the driver connection it may read from directly (storage.db).
CONNECTION = "dpor_direct"

Processor = Callable[[Any], Any] | None


class _Compiled:
    __slots__ = ("binds", "defaults", "names", "results", "sql")

    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        processors = compiled._bind_processors
        self.binds: tuple[Processor, ...] = tuple(processors.get(name) for name in self.names)
        # Values fixed when the statement was built (`prepared.one_of`'s literals, a LIMIT given a value).
        self.defaults: dict[str, Any] = compiled.construct_params(_check=False)
        self.results: tuple[Processor, ...] = tuple(
            entry.type._cached_result_processor(dialect, None) for entry in compiled._result_columns
        )


class Query:
    """A Core SELECT (columns, not entities) compiled once for SQLite's dialect on first use."""

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            self._compiled = _Compiled(self.statement, dialect)
        return self._compiled


class Reader:
    """A driver connection held for direct reads, and the dialect whose type processors read its rows."""

    __slots__ = ("conn", "dialect")

    def __init__(self, conn: sqlite3.Connection, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect


def reader(session: AsyncSession) -> Reader | None:
    """What this session may read from directly, or None: run the statement through the session (a
    write, PostgreSQL, a session no `Database.read()` opened)."""
    return session.info.get(CONNECTION)


def rows(reader: Reader, query: Query, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """`query`'s rows, each value as SQLAlchemy would give it. Errors come out as SQLAlchemy's."""
    compiled = query.compiled(reader.dialect)
    given = {**compiled.defaults, **params} if compiled.defaults else params
    values = [
        given[name] if bind is None else bind(given[name])
        for name, bind in zip(compiled.names, compiled.binds, strict=True)
    ]
    try:
        found = reader.conn.execute(compiled.sql, values).fetchall()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(compiled.sql, values, exc, sqlite3.Error) from exc
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
