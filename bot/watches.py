"""Channel watches: `/dpor subscribe` and `unsubscribe`, authorised per subscription and audited."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, policy
from bot.directory import resolve_scope
from bot.errors import SYSTEM_ACTOR, NotAuthorised
from bot.roles import LOCAL_ROLES, RoleSource
from storage import directory as store
from storage.db import Database
from storage.models import ALL_SUBSCRIPTIONS, Subscription


@dataclass(frozen=True)
class Unwatched:
    removed: list[str]  # the scopes this channel no longer watches
    kept: list[str]  # the scopes it still watches because the user may not stop them


async def _scope_subject(session: AsyncSession, scope: str) -> Subscription | None:
    return None if scope == ALL_SUBSCRIPTIONS else await store.subscription_by_id(session, scope)


def _entry(action: str, user_id: str, channel_id: str, scope: str, **why: str) -> audit.Entry:
    return audit.Entry(
        actor=user_id,
        action=action,
        subscription_id=None if scope == ALL_SUBSCRIPTIONS else scope,
        data={"channel_id": channel_id, "scope": scope, **why},
    )


async def watch(
    db: Database,
    *,
    team_id: str,
    channel_id: str,
    subscription: str,
    user_id: str,
    roles: RoleSource = LOCAL_ROLES,
) -> bool:
    """The channel gets change notifications for a subscription or `all`; False if it already did.

    Needs owner or admin there. Two at once both succeed: the unique constraint decides which one adds.
    """
    await roles.prepare(user_id, [subscription])
    async with db.write() as session:
        scope = await resolve_scope(session, subscription)
        subject = await _scope_subject(session, scope)
        await policy.check(session, "subscribe", user_id, subject, roles=roles)
        added = await store.insert_watch(
            session, team_id=team_id, channel_id=channel_id, scope=scope, created_by=user_id
        )
        if added:
            await audit.append(session, _entry("channel.subscribed", user_id, channel_id, scope))
    return added


async def unwatch(
    db: Database,
    *,
    channel_id: str,
    subscription: str | None,
    user_id: str,
    roles: RoleSource = LOCAL_ROLES,
) -> Unwatched:
    """Stop the channel's notifications for one scope, or (None) for every scope the user may stop.

    Removing a watch needs the role that adding it needs, on that subscription: an admin of one
    subscription cannot silence a channel's notifications about the others.
    """
    await roles.prepare(user_id, [subscription])  # None: every subscription, as the loop below asks
    async with db.write() as session:
        watched = await store.watched_scopes(session, channel_id)
        if subscription is not None:
            scope = await resolve_scope(session, subscription)
            subject = await _scope_subject(session, scope)
            await policy.check(session, "unsubscribe", user_id, subject, roles=roles)
            watched = [scope] if scope in watched else []
        removed, kept = [], []
        for scope in watched:
            try:
                subject = await _scope_subject(session, scope)
                await policy.check(session, "unsubscribe", user_id, subject, roles=roles)
            except NotAuthorised:
                kept.append(scope)
                continue
            if await store.delete_watch(session, channel_id, scope):
                removed.append(scope)
                await audit.append(session, _entry("channel.unsubscribed", user_id, channel_id, scope))
    return Unwatched(removed, kept)


async def channel_archived(session: AsyncSession, channel_id: str) -> None:
    """Slack refused a notification for good because the channel is archived (a dead row's recorder, in
    its transaction): every watch of the channel goes, audited as the bot's. Archived, the channel cannot
    run `/dpor unsubscribe`; unarchived, it subscribes again."""
    for scope in await store.delete_watches_in(session, channel_id):
        entry = _entry("channel.unsubscribed", SYSTEM_ACTOR, channel_id, scope, reason="channel_archived")
        await audit.append(session, entry)
