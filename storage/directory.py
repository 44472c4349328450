"""SQL for the reference data: subscriptions, the partner directory, role assignments, channel watches."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage import readmodel
from storage.models import ALL_SUBSCRIPTIONS, ChannelWatch, Partner, RoleAssignment, Subscription

# Bound parameters per IN list: well under SQLite's and asyncpg's limits.
_CHUNK = 1000

# --- subscriptions ---------------------------------------------------------------------------------


# By primary key with a statement built once: `session.get` builds and keys its query at every call.
_SUBSCRIPTION = select(Subscription).where(Subscription.id == bindparam("id"))


async def subscription_by_id(session: AsyncSession, subscription_id: str) -> Subscription | None:
    return (await session.execute(_SUBSCRIPTION, {"id": subscription_id})).scalar_one_or_none()


async def subscription_by_alias(session: AsyncSession, alias: str) -> Subscription | None:
    return (await session.scalars(select(Subscription).where(Subscription.alias == alias))).first()


async def subscriptions_by_ids(session: AsyncSession, ids: Collection[str]) -> dict[str, Subscription]:
    found: dict[str, Subscription] = {}
    wanted = list(ids)
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        for sub in await session.scalars(select(Subscription).where(Subscription.id.in_(chunk))):
            found[sub.id] = sub
    return found


async def taken_aliases(session: AsyncSession) -> list[tuple[str, str]]:
    """Every alias in use, with the subscription that holds it: (alias, subscription id)."""
    rows = await session.execute(
        select(Subscription.alias, Subscription.id).where(Subscription.alias.is_not(None))
    )
    return [(alias, sub_id) for alias, sub_id in rows]


async def clear_aliases(session: AsyncSession, ids: Sequence[str]) -> None:
    """Free these subscriptions' aliases, so that aliases can move between them in one transaction."""
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start : start + _CHUNK])
        await session.execute(update(Subscription).where(Subscription.id.in_(chunk)).values(alias=None))


async def update_subscription(
    session: AsyncSession, subscription_id: str, *, name: str, alias: str | None, provider: str | None
) -> None:
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id)
        .values(name=name, alias=alias, provider=provider)
    )


async def insert_subscriptions(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert subscriptions given as dicts of id, name, alias and provider."""
    if rows:
        await session.execute(insert(Subscription), list(rows))


async def subscriptions_in_order(
    session: AsyncSession, *, limit: int | None = None, offset: int = 0
) -> list[Subscription]:
    """Subscriptions by name, then ID."""
    query = select(Subscription).order_by(Subscription.name, Subscription.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return list((await session.scalars(query)).all())


async def delete_subscription(session: AsyncSession, subscription_id: str) -> None:
    """Remove the subscription's row (its requests' foreign key refuses it while any request names it)."""
    await session.execute(delete(Subscription).where(Subscription.id == subscription_id))


# --- partners --------------------------------------------------------------------------------------


async def partner_by_id(session: AsyncSession, partner_id: str) -> Partner | None:
    return await session.get(Partner, partner_id)


async def insert_partner(session: AsyncSession, partner_id: str, name: str) -> None:
    await session.execute(insert(Partner).values(partner_id=partner_id, name=name))


async def rename_partner(session: AsyncSession, partner_id: str, name: str) -> None:
    await session.execute(update(Partner).where(Partner.partner_id == partner_id).values(name=name))


async def delete_partner(session: AsyncSession, partner_id: str) -> None:
    await session.execute(delete(Partner).where(Partner.partner_id == partner_id))


async def all_partners(session: AsyncSession) -> list[Partner]:
    return list((await session.scalars(select(Partner).order_by(Partner.partner_id))).all())


async def partner_names(session: AsyncSession, ids: Iterable[str | None]) -> dict[str, str]:
    """The directory's name of each of these partner IDs that it knows."""
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    snap = await readmodel.of(session)
    if snap is not None:
        return {pid: snap.partners[pid] for pid in wanted if pid in snap.partners}
    rows = await session.execute(
        select(Partner.partner_id, Partner.name).where(Partner.partner_id.in_(wanted))
    )
    return {pid: name for pid, name in rows}


# --- roles -----------------------------------------------------------------------------------------


async def roles_for(session: AsyncSession, user_id: str, subscription_id: str) -> set[str]:
    """The roles a user holds on one subscription now (on it, or on every subscription)."""
    snap = await readmodel.of(session)
    if snap is not None:
        return snap.roles_for(user_id, subscription_id)
    rows = await session.scalars(
        select(RoleAssignment.role).where(
            RoleAssignment.user_id == user_id,
            RoleAssignment.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)),
        )
    )
    return set(rows.all())


async def holders(session: AsyncSession, role: str, subscription_id: str) -> list[str]:
    """Who holds `role` on one subscription now (on it, or on every subscription), in user-id order."""
    snap = await readmodel.of(session)
    if snap is not None:
        return snap.holders(role, subscription_id)
    rows = await session.scalars(
        select(RoleAssignment.user_id)
        .where(RoleAssignment.role == role, RoleAssignment.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)))
        .distinct()
        .order_by(RoleAssignment.user_id)
    )
    return list(rows.all())


async def subscriptions_without(session: AsyncSession, role: str) -> list[Subscription]:
    """The subscriptions nobody holds `role` on now (neither on it nor on every subscription), by name."""
    held = select(RoleAssignment.id).where(
        RoleAssignment.role == role,
        or_(RoleAssignment.scope == Subscription.id, RoleAssignment.scope == ALL_SUBSCRIPTIONS),
    )
    query = select(Subscription).where(~held.exists()).order_by(Subscription.name, Subscription.id)
    return list((await session.scalars(query)).all())


async def insert_role(session: AsyncSession, user_id: str, role: str, scope: str, *, granted_by: str) -> bool:
    """Record the assignment; False when the user already holds that role on that scope."""
    found = await session.scalar(
        select(RoleAssignment.id).where(
            RoleAssignment.user_id == user_id, RoleAssignment.role == role, RoleAssignment.scope == scope
        )
    )
    if found is not None:
        return False
    await session.execute(
        insert(RoleAssignment).values(user_id=user_id, role=role, scope=scope, granted_by=granted_by)
    )
    return True


async def delete_role(session: AsyncSession, user_id: str, role: str, scope: str) -> bool:
    """Remove the assignment; False when there was none."""
    result = await session.execute(
        delete(RoleAssignment).where(
            RoleAssignment.user_id == user_id, RoleAssignment.role == role, RoleAssignment.scope == scope
        )
    )
    return bool(result.rowcount)


async def delete_roles_in_scope(session: AsyncSession, scope: str) -> list[tuple[str, str]]:
    """Remove every assignment on one scope; returns (user, role) of each, in order."""
    rows = await session.execute(
        delete(RoleAssignment)
        .where(RoleAssignment.scope == scope)
        .returning(RoleAssignment.user_id, RoleAssignment.role)
    )
    return sorted((user_id, role) for user_id, role in rows)


async def role_assignments(session: AsyncSession, scope: str | None = None) -> list[RoleAssignment]:
    """Every assignment, or those that apply to one scope (its own and those on every subscription)."""
    query = select(RoleAssignment).order_by(RoleAssignment.scope, RoleAssignment.role, RoleAssignment.user_id)
    if scope is not None:
        query = query.where(or_(RoleAssignment.scope == scope, RoleAssignment.scope == ALL_SUBSCRIPTIONS))
    return list((await session.scalars(query)).all())


# --- channel watches -------------------------------------------------------------------------------


async def insert_watch(
    session: AsyncSession, *, team_id: str, channel_id: str, scope: str, created_by: str
) -> bool:
    """Record that a channel watches a scope; False when it already does (also when another request
    recorded it a moment ago: the unique constraint decides, not a read before the write)."""
    values = {"team_id": team_id, "channel_id": channel_id, "scope": scope, "created_by": created_by}
    dialect = session.get_bind().dialect.name
    upsert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    result = await session.execute(
        upsert(ChannelWatch).values(values).on_conflict_do_nothing(index_elements=["channel_id", "scope"])
    )
    return result.rowcount == 1


async def watched_scopes(session: AsyncSession, channel_id: str) -> list[str]:
    """What a channel watches: subscription IDs, and `*` for every subscription."""
    rows = await session.scalars(
        select(ChannelWatch.scope).where(ChannelWatch.channel_id == channel_id).order_by(ChannelWatch.id)
    )
    return list(rows.all())


async def delete_watch(session: AsyncSession, channel_id: str, scope: str) -> bool:
    result = await session.execute(
        delete(ChannelWatch).where(ChannelWatch.channel_id == channel_id, ChannelWatch.scope == scope)
    )
    return result.rowcount > 0


async def delete_watches_of(session: AsyncSession, scope: str) -> list[str]:
    """Stop every channel watching one scope; returns those channels."""
    rows = await session.scalars(
        delete(ChannelWatch).where(ChannelWatch.scope == scope).returning(ChannelWatch.channel_id)
    )
    return sorted(rows.all())


async def delete_watches_in(session: AsyncSession, channel_id: str) -> list[str]:
    """Stop one channel watching anything; returns the scopes it watched."""
    rows = await session.scalars(
        delete(ChannelWatch).where(ChannelWatch.channel_id == channel_id).returning(ChannelWatch.scope)
    )
    return sorted(rows.all())


async def watch_channels(session: AsyncSession) -> list[str]:
    """Every channel that watches a subscription or all of them, each once."""
    rows = await session.scalars(select(ChannelWatch.channel_id).distinct().order_by(ChannelWatch.channel_id))
    return list(rows.all())


async def watching_channels(session: AsyncSession, subscription_id: str) -> list[str]:
    """The channels told about a subscription's changes, each once, in the order they subscribed."""
    snap = await readmodel.of(session)
    if snap is not None:
        return snap.watching(subscription_id)
    rows = await session.scalars(
        select(ChannelWatch.channel_id)
        .where(ChannelWatch.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)))
        .order_by(ChannelWatch.id)
    )
    return list(dict.fromkeys(rows.all()))
