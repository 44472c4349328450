"""Checks for the slash commands that manage roles and channel notifications."""

from __future__ import annotations

from sqlalchemy import select

from bot.directory import resolve_subscription, roles_for
from bot.errors import NotAuthorised, NotOwner
from storage.db import Database
from storage.models import ALL_SUBSCRIPTIONS, RoleAssignment


async def require_owner(db: Database, user_id: str, subscription: str | None) -> None:
    """Managing roles needs the owner role on that subscription (or on all, for an all-subscription grant)."""
    async with db.read() as session:
        if subscription is None:
            roles = await roles_for(session, user_id, ALL_SUBSCRIPTIONS)
            where = "every subscription"
        else:
            sub = await resolve_subscription(session, subscription)
            roles = await roles_for(session, user_id, sub.id)
            where = f"{sub.name}"
    if "owner" not in roles:
        raise NotOwner(f"Only an owner of {where} can manage roles there.")


async def require_any_role(db: Database, user_id: str, subscription: str | None) -> None:
    """Routing notifications to a channel needs a role (owner or admin) on what it will report."""
    async with db.read() as session:
        if subscription is None or subscription.lower() == "all":
            roles = await roles_for(session, user_id, ALL_SUBSCRIPTIONS)
            where = "every subscription"
        else:
            sub = await resolve_subscription(session, subscription)
            roles = await roles_for(session, user_id, sub.id)
            where = sub.name
    if not roles:
        raise NotAuthorised(f"Only an owner or admin of {where} can do that.")


async def require_some_role(db: Database, user_id: str) -> None:
    """Stopping a channel's notifications needs a role on some subscription: it only removes noise."""
    async with db.read() as session:
        held = await session.scalar(
            select(RoleAssignment.id).where(RoleAssignment.user_id == user_id).limit(1)
        )
    if held is None:
        raise NotAuthorised("Only an owner or admin of a subscription can do that.")
