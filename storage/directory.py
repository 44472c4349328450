"""TEMPORARY (core branch only): replaced by the cli helper's storage/directory.py at merge."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import ALL_SUBSCRIPTIONS, ChannelWatch, RoleAssignment, Subscription


async def roles_for(session: AsyncSession, user_id: str, subscription_id: str) -> set[str]:
    rows = await session.scalars(
        select(RoleAssignment.role).where(
            RoleAssignment.user_id == user_id,
            RoleAssignment.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)),
        )
    )
    return set(rows.all())


async def subscription_by_id(session: AsyncSession, subscription_id: str) -> Subscription | None:
    return await session.get(Subscription, subscription_id)


async def watching_channels(session: AsyncSession, subscription_id: str) -> list[str]:
    rows = await session.scalars(
        select(ChannelWatch.channel_id)
        .where(ChannelWatch.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)))
        .order_by(ChannelWatch.id)
    )
    return list(dict.fromkeys(rows.all()))


async def holds_any_role(session: AsyncSession, user_id: str) -> bool:
    found = await session.scalar(select(RoleAssignment.id).where(RoleAssignment.user_id == user_id).limit(1))
    return found is not None
