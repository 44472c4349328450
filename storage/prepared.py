"""UPDATEs the hot paths run several times per request, built once per shape.

SQLAlchemy builds, coerces and keys a statement each time one is written inline: for a short UPDATE that
is most of its cost (about 0.3 ms of 0.45 on a 2-core machine), and an ORM-enabled UPDATE also passes
through the ORM's bulk layer though no object comes back. `update_where` builds a Core UPDATE once for
each table, WHERE columns and SET columns, with bind parameters; a call then pays only for the compiled
cache's lookup and the driver. Selects that are always the same are module constants where they are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import ColumnElement, Table, Update, bindparam, literal, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import direct


def one_of(column: Any, values: tuple[Any, ...]) -> ColumnElement[bool]:
    """`column IN (...)` over a fixed set of values, for a statement built once: one bound parameter per
    value. `column.in_(values)` is an "expanding" parameter whose SQL SQLAlchemy rewrites at every
    execution (about 3% of `show`'s CPU under load went there, 30 us of its overview's read)."""
    return column.in_([literal(value, column.type) for value in values])


@cache
def _update(
    table: Table, where: tuple[str, ...], values: tuple[str, ...], returning: tuple[Any, ...] | None
) -> Update:
    c = table.c
    statement = (
        update(table)
        .where(*(c[name] == bindparam(f"w_{name}", type_=c[name].type) for name in where))
        .values({name: bindparam(f"v_{name}", type_=c[name].type) for name in values})
    )
    return statement.returning(*returning) if returning is not None else statement


def _params(where: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    params = {f"w_{name}": value for name, value in where.items()}
    params.update({f"v_{name}": value for name, value in values.items()})
    return params


async def update_where(
    session: AsyncSession, table: Table, where: Mapping[str, Any], values: Mapping[str, Any]
) -> int:
    """UPDATE `table` SET `values` WHERE each column of `where` equals its value; the rows it changed."""
    statement = _update(table, tuple(sorted(where)), tuple(sorted(values)), None)
    lane = direct.lane(session)
    if lane is not None:
        return direct.count(lane, direct.query(statement), _params(where, values))
    result: Any = await session.execute(statement, _params(where, values))
    return int(result.rowcount)


def can_return(session: AsyncSession) -> bool:
    """Whether this database answers UPDATE ... RETURNING (PostgreSQL; SQLite from 3.35)."""
    return bool(session.get_bind().dialect.update_returning)


async def update_returning(
    session: AsyncSession,
    table: Table,
    where: Mapping[str, Any],
    values: Mapping[str, Any],
    returning: tuple[Any, ...] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Sequence[Any] | None:
    """`update_where` that returns the row as it is after the UPDATE (one row: `where` names a key), or
    None when no row matched: its values in the order of the table's columns, or of `returning`. Only
    where `can_return`. `returning`: other columns or expressions to return instead (each the same
    object at every call: the statement is built once for it), with the bind parameters they add in
    `params`."""
    columns = tuple(table.c) if returning is None else returning
    statement = _update(table, tuple(sorted(where)), tuple(sorted(values)), columns)
    given = {**_params(where, values), **(params or {})}
    lane = direct.lane(session)
    if lane is not None:
        found = direct.rows(lane, direct.query(statement), given)
        return found[0] if found else None
    return (await session.execute(statement, given)).first()
