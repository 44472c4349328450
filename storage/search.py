"""SQL for the set form's typeahead: subscriptions a person holds a role on, and the partner directory."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import sqlite
from storage.models import ALL_SUBSCRIPTIONS, Partner, RoleAssignment, Subscription


def _contains(session: AsyncSession, column: Any, needle: str) -> ColumnElement[bool]:
    """`column`, folded to lower case, contains `needle` (already lower case). SQLite's own lower() folds
    ASCII letters only: a needle beyond ASCII ('élec' for 'Électricité') is matched with Python's, which
    storage.db registers on each connection; an ASCII needle keeps the built-in, since only the name's
    ASCII letters can match it and a Python call per row made a scan of 100,000 subscriptions twice as
    slow. PostgreSQL's lower() folds every letter in a UTF-8 locale."""
    if needle.isascii() or session.get_bind().dialect.name != "sqlite":
        lowered = func.lower(column)
    else:
        lowered = getattr(func, sqlite.LOWER)(column)
    return lowered.contains(needle, autoescape=True)


async def subscriptions_held(
    session: AsyncSession, *, user_id: str, roles: Collection[str], needle: str, limit: int
) -> list[Subscription]:
    """Subscriptions on which `user_id` holds one of `roles` (there, or on every subscription), whose
    name, alias or ID contains `needle` in any case (an empty needle matches all), by name then ID."""
    mine = and_(RoleAssignment.user_id == user_id, RoleAssignment.role.in_(list(roles)))
    everywhere = exists().where(mine, RoleAssignment.scope == ALL_SUBSCRIPTIONS)
    here = Subscription.id.in_(select(RoleAssignment.scope).where(mine))
    query = select(Subscription).where(or_(everywhere, here))
    if needle:
        needle = needle.lower()
        query = query.where(
            or_(
                _contains(session, Subscription.name, needle),
                _contains(session, Subscription.alias, needle),
                _contains(session, Subscription.id, needle),
            )
        )
    query = query.order_by(Subscription.name, Subscription.id).limit(limit)
    return list((await session.scalars(query)).all())


async def partners_matching(session: AsyncSession, *, needle: str, limit: int) -> list[Partner]:
    """Partners whose name or ID contains `needle` in any case (an empty needle matches all), by name."""
    query = select(Partner)
    if needle:
        needle = needle.lower()
        query = query.where(
            or_(
                _contains(session, Partner.name, needle),
                Partner.partner_id.contains(needle, autoescape=True),
            )
        )
    query = query.order_by(Partner.name, Partner.partner_id).limit(limit)
    return list((await session.scalars(query)).all())


async def partner(session: AsyncSession, partner_id: str) -> Partner | None:
    return await session.get(Partner, partner_id)
