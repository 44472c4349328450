"""Reference data the requests stand on: subscriptions, the partner directory, roles, channel watches."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.errors import (
    BadInput,
    Conflict,
    InvalidPartnerId,
    InvalidSubscriptionId,
    UnknownSubscription,
)
from bot.providers import NAMES as PROVIDER_NAMES
from bot.text import clean
from storage.db import Database
from storage.models import ALL_SUBSCRIPTIONS, ChannelWatch, Partner, RoleAssignment, Subscription

ROLES = ("owner", "admin")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
GUID_SHAPE = re.compile(r"^[0-9a-zA-Z]{8}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{12}$")
PARTNER_ID = re.compile(r"^\d{6,7}$")
ALIAS = re.compile(r"^\S{1,64}$")
SLACK_USER = re.compile(r"^(?:<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>|([UW][A-Z0-9]{2,}))$")
MAX_NAME = 200


def subscription_id(text: str) -> str:
    """Validate a subscription ID (a GUID) and return it in canonical lower case."""
    text = text.strip()
    if not GUID.match(text):
        raise InvalidSubscriptionId(
            f"`{text}` is not a subscription ID: expected a GUID such as "
            "`00000000-0000-0000-0000-000000000000`."
        )
    return text.lower()


def slack_user(text: str) -> str | None:
    """`U123`, `<@U123>` or `<@U123|name>` as the user ID `U123`; None when it is not a user."""
    match = SLACK_USER.match(text.strip())
    return (match.group(1) or match.group(2)) if match else None


def partner_id(text: str) -> str:
    text = text.strip()
    if not PARTNER_ID.match(text):
        raise InvalidPartnerId(
            f"`{text}` is not a partner ID: expected the partner's numeric Partner ID "
            "(Microsoft AI Cloud Partner Program ID), 6 or 7 digits, such as `4977985`."
        )
    return text


def looks_like_guid(text: str) -> bool:
    """Meant as an ID (hex and dashes, or a GUID's shape with a typo: `O` for `0`): name it malformed."""
    return GUID_SHAPE.match(text) is not None or (
        len(text) >= 8 and re.fullmatch(r"[0-9a-fA-F-]+", text) is not None and "-" in text
    )


def _name(text: str, what: str) -> str:
    text = " ".join(clean(text).split())
    if not text:
        raise BadInput(f"The {what} name is empty.")
    if len(text) > MAX_NAME:
        raise BadInput(f"The {what} name is {len(text)} characters long; the limit is {MAX_NAME}.")
    return text


def _alias(text: str | None) -> str | None:
    if text is None or not clean(text).strip():
        return None
    text = clean(text).strip()
    if not ALIAS.match(text):
        raise BadInput("An alias is one word of at most 64 characters, such as `prod-eu`.")
    if GUID.match(text):
        raise BadInput("An alias cannot itself look like a subscription ID.")
    return text


async def resolve_subscription(session: AsyncSession, ref: str) -> Subscription:
    """Find a subscription by ID or alias; refuse with a sentence that says how to fix the reference."""
    ref = ref.strip()
    if GUID.match(ref):
        sub = await session.get(Subscription, ref.lower())
        if sub is None:
            raise UnknownSubscription(
                f"Subscription `{ref}` is not known to dpor-bot. "
                "An operator adds it with `dpor-bot subscriptions add`."
            )
        return sub
    sub = (await session.scalars(select(Subscription).where(Subscription.alias == ref))).first()
    if sub is not None:
        return sub
    if looks_like_guid(ref):
        subscription_id(ref)
    raise UnknownSubscription(
        f"No subscription has the ID or alias `{ref}`. `/dpor list` shows the subscriptions."
    )


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    name: str
    alias: str | None = None
    # The subscription's partner provider; None keeps the one it has (a new one uses DPOR_PROVIDER).
    provider: str | None = None


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    unchanged: int


def validate_subscription(row: SubscriptionRow) -> SubscriptionRow:
    return SubscriptionRow(
        subscription_id(row.id), _name(row.name, "subscription"), _alias(row.alias), _provider(row.provider)
    )


def _provider(name: str | None) -> str | None:
    if name is None:
        return None
    if name.strip().lower() not in PROVIDER_NAMES:
        raise BadInput(f"`{name}` is not a partner provider: expected one of {', '.join(PROVIDER_NAMES)}.")
    return name.strip().lower()


def _differs(sub: Subscription, row: SubscriptionRow) -> bool:
    return (sub.name, sub.alias) != (row.name, row.alias) or row.provider not in (None, sub.provider)


async def upsert_subscriptions(db: Database, rows: Sequence[SubscriptionRow], *, actor: str) -> ImportResult:
    """Add or update many subscriptions in one transaction; unchanged rows write nothing.

    Every row is validated before anything is written, so a bad file changes nothing.
    """
    validated = [validate_subscription(r) for r in rows]
    by_id: dict[str, SubscriptionRow] = {}
    for row in validated:
        by_id[row.id] = row
    aliases: dict[str, str] = {}
    for row in by_id.values():
        if row.alias is not None:
            if row.alias in aliases and aliases[row.alias] != row.id:
                raise Conflict(f"Alias `{row.alias}` is given to two subscriptions in the input.")
            aliases[row.alias] = row.id

    async with db.write() as session:
        existing: dict[str, Subscription] = {}
        ids = list(by_id)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for sub in await session.scalars(select(Subscription).where(Subscription.id.in_(chunk))):
                existing[sub.id] = sub
        if aliases:
            taken = await session.execute(
                select(Subscription.alias, Subscription.id).where(Subscription.alias.is_not(None))
            )
            for alias, owner in taken:
                # An owner that is in the input gives the alias up (each alias is unique in the input).
                if alias in aliases and aliases[alias] != owner and owner not in by_id:
                    raise Conflict(f"Alias `{alias}` already belongs to subscription `{owner}`.")

        new = [r for r in by_id.values() if r.id not in existing]
        changed = [r for r in by_id.values() if r.id in existing and _differs(existing[r.id], r)]
        changed_ids = {r.id for r in changed}
        if changed:
            # Free the aliases being moved first, so swaps within one import do not collide.
            await session.execute(
                update(Subscription).where(Subscription.id.in_([r.id for r in changed])).values(alias=None)
            )
            for r in changed:
                await session.execute(
                    update(Subscription)
                    .where(Subscription.id == r.id)
                    .values(name=r.name, alias=r.alias, provider=r.provider or existing[r.id].provider)
                )
        if new:
            await session.execute(
                insert(Subscription),
                [{"id": r.id, "name": r.name, "alias": r.alias, "provider": r.provider} for r in new],
            )
        await audit.append_many(
            session,
            [
                audit.Entry(
                    actor=actor,
                    action="subscription.added",
                    subscription_id=r.id,
                    data={
                        "name": r.name,
                        "alias": r.alias,
                        "updated": r.id in changed_ids,
                        **({"provider": r.provider} if r.provider else {}),
                    },
                )
                for r in [*new, *changed]
            ],
        )
    return ImportResult(added=len(new), updated=len(changed), unchanged=len(by_id) - len(new) - len(changed))


async def list_subscriptions(
    db: Database, *, limit: int | None = None, offset: int = 0
) -> list[Subscription]:
    async with db.read() as session:
        query = select(Subscription).order_by(Subscription.name, Subscription.id).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return list((await session.scalars(query)).all())


async def add_partner(db: Database, pid: str, name: str, *, actor: str) -> bool:
    """Add a partner to the directory, or rename it; returns False when nothing changed."""
    pid, name = partner_id(pid), _name(name, "partner")
    async with db.write() as session:
        partner = await session.get(Partner, pid)
        if partner is not None and partner.name == name:
            return False
        if partner is None:
            session.add(Partner(partner_id=pid, name=name))
        else:
            partner.name = name
        await audit.append(
            session,
            audit.Entry(
                actor=actor,
                action="partner.added",
                data={"partner_id": pid, "name": name, "updated": partner is not None},
            ),
        )
    return True


async def list_partners(db: Database) -> list[Partner]:
    async with db.read() as session:
        return list((await session.scalars(select(Partner).order_by(Partner.partner_id))).all())


async def partner_names(session: AsyncSession, ids: Sequence[str | None]) -> dict[str, str]:
    wanted = {i for i in ids if i}
    if not wanted:
        return {}
    rows = await session.execute(
        select(Partner.partner_id, Partner.name).where(Partner.partner_id.in_(wanted))
    )
    return {pid: name for pid, name in rows}


def _role(role: str) -> str:
    role = role.strip().lower()
    if role not in ROLES:
        raise BadInput(f"`{role}` is not a role: use `owner` or `admin`.")
    return role


async def _scope(session: AsyncSession, subscription: str | None) -> str:
    if subscription is None or subscription == ALL_SUBSCRIPTIONS:
        return ALL_SUBSCRIPTIONS
    return (await resolve_subscription(session, subscription)).id


async def roles_for(session: AsyncSession, user_id: str, subscription_id: str) -> set[str]:
    """The roles a user holds on one subscription now (direct or for every subscription)."""
    rows = await session.scalars(
        select(RoleAssignment.role).where(
            RoleAssignment.user_id == user_id,
            RoleAssignment.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)),
        )
    )
    return set(rows.all())


async def grant_role(db: Database, user_id: str, role: str, subscription: str | None, *, actor: str) -> bool:
    role = _role(role)
    async with db.write() as session:
        scope = await _scope(session, subscription)
        found = await session.scalar(
            select(RoleAssignment.id).where(
                RoleAssignment.user_id == user_id, RoleAssignment.role == role, RoleAssignment.scope == scope
            )
        )
        if found is not None:
            return False
        session.add(RoleAssignment(user_id=user_id, role=role, scope=scope, granted_by=actor))
        await audit.append(
            session,
            audit.Entry(
                actor=actor,
                action="role.granted",
                subscription_id=None if scope == ALL_SUBSCRIPTIONS else scope,
                data={"user_id": user_id, "role": role, "scope": scope},
            ),
        )
    return True


async def revoke_role(db: Database, user_id: str, role: str, subscription: str | None, *, actor: str) -> bool:
    role = _role(role)
    async with db.write() as session:
        scope = await _scope(session, subscription)
        result = await session.execute(
            delete(RoleAssignment).where(
                RoleAssignment.user_id == user_id, RoleAssignment.role == role, RoleAssignment.scope == scope
            )
        )
        if result.rowcount == 0:
            return False
        await audit.append(
            session,
            audit.Entry(
                actor=actor,
                action="role.revoked",
                subscription_id=None if scope == ALL_SUBSCRIPTIONS else scope,
                data={"user_id": user_id, "role": role, "scope": scope},
            ),
        )
    return True


async def list_roles(db: Database, subscription: str | None = None) -> list[RoleAssignment]:
    async with db.read() as session:
        query = select(RoleAssignment).order_by(
            RoleAssignment.scope, RoleAssignment.role, RoleAssignment.user_id
        )
        if subscription is not None:
            scope = await _scope(session, subscription)
            query = query.where(or_(RoleAssignment.scope == scope, RoleAssignment.scope == ALL_SUBSCRIPTIONS))
        return list((await session.scalars(query)).all())


async def watch(db: Database, *, team_id: str, channel_id: str, subscription: str, user_id: str) -> bool:
    """Subscribe a channel to change notifications for one subscription or `all`."""
    async with db.write(chain=False) as session:
        scope = ALL_SUBSCRIPTIONS if subscription.lower() == "all" else await _scope(session, subscription)
        found = await session.scalar(
            select(ChannelWatch.id).where(ChannelWatch.channel_id == channel_id, ChannelWatch.scope == scope)
        )
        if found is not None:
            return False
        session.add(ChannelWatch(team_id=team_id, channel_id=channel_id, scope=scope, created_by=user_id))
    return True


async def unwatch(db: Database, *, channel_id: str) -> int:
    async with db.write(chain=False) as session:
        result = await session.execute(delete(ChannelWatch).where(ChannelWatch.channel_id == channel_id))
        return result.rowcount


async def watching_channels(session: AsyncSession, subscription_id: str) -> list[str]:
    rows = await session.scalars(
        select(ChannelWatch.channel_id)
        .where(ChannelWatch.scope.in_((subscription_id, ALL_SUBSCRIPTIONS)))
        .order_by(ChannelWatch.id)
    )
    return list(dict.fromkeys(rows.all()))


async def resolve_scope(session: AsyncSession, ref: str | None) -> str:
    """TEMPORARY (core branch only)."""
    if ref is None or ref.strip().lower() in (ALL_SUBSCRIPTIONS, "all"):
        return ALL_SUBSCRIPTIONS
    return (await resolve_subscription(session, ref)).id
