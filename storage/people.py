"""The people table: a Slack user linked by an operator to a Microsoft Entra object ID."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import Person, utcnow


async def person(session: AsyncSession, slack_user_id: str) -> Person | None:
    return await session.get(Person, slack_user_id)


async def object_ids(session: AsyncSession, slack_user_ids: Collection[str]) -> dict[str, str]:
    """The linked object ID of each of these Slack users that has one."""
    if not slack_user_ids:
        return {}
    rows = await session.execute(
        select(Person.slack_user_id, Person.object_id).where(Person.slack_user_id.in_(list(slack_user_ids)))
    )
    return {user: oid for user, oid in rows}


async def everyone(session: AsyncSession) -> list[Person]:
    """Every linked person, by Slack user ID."""
    return list((await session.scalars(select(Person).order_by(Person.slack_user_id))).all())


async def link(
    session: AsyncSession, slack_user_id: str, object_id: str, upn: str | None, *, linked_by: str
) -> Person | None:
    """Link (or re-link) the user; returns the link it replaced (None: new). Unchanged links are kept."""
    row = await session.get(Person, slack_user_id)
    if row is None:
        session.add(Person(slack_user_id=slack_user_id, object_id=object_id, upn=upn, linked_by=linked_by))
        await session.flush()
        return None
    before = Person(slack_user_id=row.slack_user_id, object_id=row.object_id, upn=row.upn)
    row.object_id, row.upn, row.linked_by, row.linked_at = object_id, upn, linked_by, utcnow()
    await session.flush()
    return before


async def unlink(session: AsyncSession, slack_user_id: str) -> Person | None:
    """Remove the user's link; returns it (None: there was none)."""
    row = await session.get(Person, slack_user_id)
    if row is None:
        return None
    await session.execute(delete(Person).where(Person.slack_user_id == slack_user_id))
    return row

