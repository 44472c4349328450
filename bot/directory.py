"""Reference data the requests stand on: subscriptions, the partner directory, roles, channel watches.

Here the rules (what a valid ID, name, alias, role and scope is) and the audit; the SQL is in
storage/directory.py.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, owners
from bot.errors import (
    BadInput,
    Conflict,
    InvalidPartnerId,
    InvalidSubscriptionId,
    UnknownSubscription,
)
from bot.providers import NAMES as PROVIDER_NAMES
from bot.providers import OLD_NAMES
from bot.text import clean, has_invisible
from storage import directory as store
from storage.db import Database
from storage.models import ALL_SUBSCRIPTIONS, Partner, RoleAssignment, Subscription

ROLES = ("owner", "admin")
# The words that mean every subscription wherever a subscription or a scope is named.
SCOPE_WORDS = (ALL_SUBSCRIPTIONS, "all")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
GUID_SHAPE = re.compile(r"^[0-9a-zA-Z]{8}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{4}-[0-9a-zA-Z]{12}$")
# A GUID's shape in any script's letters and digits (Arabic-Indic digits): meant as an ID, refused as one.
ANY_GUID_SHAPE = re.compile(r"^[^\W_]{8}-[^\W_]{4}-[^\W_]{4}-[^\W_]{4}-[^\W_]{12}$")
PARTNER_ID = re.compile(r"^[0-9]{6,7}$", re.ASCII)
ALIAS = re.compile(r"^\S{1,64}$")
MAX_NAME = 200


def ascii_id(text: str) -> str:
    """An ID as typed, folded to ASCII where Unicode says it is the same character (NFKC: fullwidth
    `４` is `4`, `ａ` is `a`); what NFKC does not fold (Arabic-Indic digits) stays, to be refused."""
    return unicodedata.normalize("NFKC", text).strip()


def _not_ascii(text: str) -> str:
    """The sentence's tail for an ID that holds characters other than ASCII after folding."""
    if text.isascii():
        return ""
    return " It holds characters other than ASCII letters and digits: type it with the digits 0-9 (and a-f)."


def subscription_id(text: str) -> str:
    """Validate a subscription ID (a GUID) and return it in canonical ASCII lower case."""
    folded = ascii_id(text)
    if not GUID.match(folded):
        raise InvalidSubscriptionId(
            f"`{text.strip()}` is not a subscription ID: expected a GUID such as "
            f"`00000000-0000-0000-0000-000000000000`.{_not_ascii(folded)}"
        )
    return folded.lower()


def partner_id(text: str) -> str:
    """Validate a partner ID and return it in ASCII digits (never as typed)."""
    folded = ascii_id(text)
    if not PARTNER_ID.match(folded):
        raise InvalidPartnerId(
            f"`{text.strip()}` is not a partner ID: expected the partner's numeric Partner ID "
            "(Microsoft AI Cloud Partner Program ID), 6 or 7 digits, such as `4977985`."
            f"{_not_ascii(folded)}"
        )
    return folded


def looks_like_guid(text: str) -> bool:
    """Meant as an ID (hex and dashes, or a GUID's shape with a typo: `O` for `0`): name it malformed."""
    return GUID_SHAPE.match(text) is not None or (
        len(text) >= 8 and re.fullmatch(r"[0-9a-fA-F-]+", text) is not None and "-" in text
    )


def alias_key(text: str) -> str:
    """What an alias reads as: two aliases with one key look alike (`Prod`, `prod`, `ｐｒｏｄ`)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def is_scope_word(text: str) -> bool:
    """`*` or `all` in any case or width: every subscription."""
    return alias_key(text.strip()) in SCOPE_WORDS


def _name(text: str, what: str) -> str:
    text = " ".join(clean(text).split())
    if not text:
        raise BadInput(f"The {what} name is empty.")
    if len(text) > MAX_NAME:
        raise BadInput(f"The {what} name is {len(text)} characters long; the limit is {MAX_NAME}.")
    return text


class Keep(Enum):
    """An alias left out (a CSV file without the alias column): the subscription keeps the one it has."""

    ALIAS = "keep"


KEEP = Keep.ALIAS


def _alias(text: str | Keep | None) -> str | Keep | None:
    if text is None or text is KEEP:
        return text
    text = text.strip()
    if not text:
        return None
    if has_invisible(text):
        raise BadInput("An alias cannot hold invisible characters (zero-width, direction marks, controls).")
    if not ALIAS.match(text):
        raise BadInput("An alias is one word of at most 64 characters, such as `prod-eu`.")
    key = alias_key(text)
    if key in SCOPE_WORDS:
        raise BadInput(f"`{text}` cannot be an alias: `*` and `all` mean every subscription.")
    if looks_like_guid(key):
        raise BadInput("An alias cannot itself look like a subscription ID.")
    return text


async def resolve_subscription(session: AsyncSession, ref: str) -> Subscription:
    """Find a subscription by ID or alias; refuse with a sentence that says how to fix the reference."""
    ref = ref.strip()
    if is_scope_word(ref):
        raise UnknownSubscription(
            f"`{ref}` means every subscription, not one: name a subscription by its ID or alias."
        )
    folded = ascii_id(ref)
    if GUID.match(folded):
        sub = await store.subscription_by_id(session, folded.lower())
        if sub is None:
            raise UnknownSubscription(
                f"Subscription `{ref}` is not known to dpor-bot. "
                "An operator adds it with `dpor-bot subscriptions add`."
            )
        return sub
    sub = await store.subscription_by_alias(session, ref)
    if sub is not None:
        return sub
    if looks_like_guid(folded) or ANY_GUID_SHAPE.match(folded):
        subscription_id(ref)
    raise UnknownSubscription(
        f"No subscription has the ID or alias `{ref}`. `/dpor list` shows the subscriptions."
    )


async def resolve_scope(session: AsyncSession, ref: str | None) -> str:
    """The scope a role or a channel watch names: `*` (nothing, `*` or `all`) or one subscription's ID."""
    if ref is None or is_scope_word(ref):
        return ALL_SUBSCRIPTIONS
    return (await resolve_subscription(session, ref)).id


@dataclass(frozen=True)
class SubscriptionRow:
    id: str
    name: str
    # None: no alias; KEEP: the one the subscription has (a new one gets none).
    alias: str | Keep | None = None
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
    if name.strip().lower() not in (*PROVIDER_NAMES, *OLD_NAMES):  # an old name works (and says so once)
        raise BadInput(f"`{name}` is not a partner provider: expected one of {', '.join(PROVIDER_NAMES)}.")
    return name.strip().lower()


def _differs(sub: Subscription, row: SubscriptionRow) -> bool:
    return (sub.name, sub.alias) != (row.name, row.alias) or row.provider not in (None, sub.provider)


def _check_aliases(rows: dict[str, SubscriptionRow], setting: set[str], taken: list[tuple[str, str]]) -> None:
    """Refuse an alias being set that reads the same as another subscription's (in the input or stored)."""
    held: dict[str, tuple[str, str]] = {}
    for row in rows.values():
        if not isinstance(row.alias, str):
            continue
        key = alias_key(row.alias)
        if key in held and (row.id in setting or held[key][1] in setting):
            other = held[key][0]
            if other == row.alias:
                raise Conflict(f"Alias `{other}` is given to two subscriptions in the input.")
            raise Conflict(
                f"Aliases `{other}` and `{row.alias}` read the same: give each subscription its own."
            )
        held.setdefault(key, (row.alias, row.id))
    for alias, owner in taken:
        # A subscription in the input gives up its stored alias for the one the input gives it.
        found = held.get(alias_key(alias))
        if owner in rows or found is None or found[1] not in setting:
            continue
        if found[0] == alias:
            raise Conflict(f"Alias `{alias}` already belongs to subscription `{owner}`.")
        raise Conflict(
            f"Alias `{found[0]}` reads the same as `{alias}`, the alias of subscription `{owner}`."
        )


async def upsert_subscriptions(db: Database, rows: Sequence[SubscriptionRow], *, actor: str) -> ImportResult:
    """Add or update many subscriptions in one transaction; unchanged rows write nothing.

    Every row is validated before anything is written, so a bad file changes nothing.
    """
    by_id = {row.id: row for row in map(validate_subscription, rows)}
    async with db.write() as session:
        existing = await store.subscriptions_by_ids(session, by_id)
        final = {
            i: replace(r, alias=existing[i].alias if i in existing else None) if r.alias is KEEP else r
            for i, r in by_id.items()
        }
        # The aliases this input sets or moves (kept ones were checked when they were set).
        setting = {
            i
            for i, r in final.items()
            if r.alias is not None and (i not in existing or r.alias != existing[i].alias)
        }
        if setting:
            _check_aliases(final, setting, await store.taken_aliases(session))

        new = [r for r in final.values() if r.id not in existing]
        changed = [r for r in final.values() if r.id in existing and _differs(existing[r.id], r)]
        if changed:
            # Free the aliases being moved first, so swaps within one import do not collide.
            await store.clear_aliases(session, [r.id for r in changed])
            for r in changed:
                await store.update_subscription(
                    session, r.id, name=r.name, alias=r.alias, provider=r.provider or existing[r.id].provider
                )
        await store.insert_subscriptions(
            session, [{"id": r.id, "name": r.name, "alias": r.alias, "provider": r.provider} for r in new]
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
                        "updated": r.id in existing,
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
        return await store.subscriptions_in_order(session, limit=limit, offset=offset)


async def add_partner(db: Database, pid: str, name: str, *, actor: str) -> bool:
    """Add a partner to the directory, or rename it; returns False when nothing changed."""
    pid, name = partner_id(pid), _name(name, "partner")
    async with db.write() as session:
        partner = await store.partner_by_id(session, pid)
        if partner is not None and partner.name == name:
            return False
        if partner is None:
            await store.insert_partner(session, pid, name)
        else:
            await store.rename_partner(session, pid, name)
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
        return await store.all_partners(session)


def _role(role: str) -> str:
    role = role.strip().lower()
    if role not in ROLES:
        raise BadInput(f"`{role}` is not a role: use `owner` or `admin`.")
    return role


@dataclass(frozen=True)
class RoleChange:
    scope: str  # the subscription's ID, or `*` for every subscription
    changed: bool  # False: the user already held (grant) or did not hold (revoke) the role there
    # A forced revocation (the CLI's --force): the subscriptions it left without an owner.
    left_without_owner: tuple[str, ...] = ()


async def change_role(
    db: Database,
    user_id: str,
    role: str,
    subscription: str | None,
    *,
    grant: bool,
    actor: str,
    force: bool = False,
    notify: Sequence[str] = (),
    authorise: Callable[[AsyncSession, str], Awaitable[None]] | None = None,
) -> RoleChange:
    """Grant or revoke a role on a subscription, or on every one (None, `*`, `all`); audited if it changed,
    and announced to `notify` (DPOR_NOTIFY_CHANNELS) and the channels watching the scope. Revoking a
    subscription's last owner is refused (LastOwner) unless `force` (the CLI; the event records it).
    `authorise(session, scope)`: the actor's own right, checked in this transaction before any write (a
    right revoked while this waited to write is seen); it refuses by raising."""
    role = _role(role)
    async with db.write() as session:
        scope = await resolve_scope(session, subscription)
        if authorise is not None:
            await authorise(session, scope)
        if grant:
            changed = await store.insert_role(session, user_id, role, scope, granted_by=actor)
        else:
            changed = await store.delete_role(session, user_id, role, scope)
        orphans = []
        if changed and not grant and role == "owner":
            orphans = await owners.left_without_owner(session, scope)
            if orphans and not force:
                raise owners.last_owner(user_id, scope, orphans)  # rolls the deletion back
        if changed:
            forced = {"forced": True, "left_without_owner": [sub.id for sub in orphans]} if orphans else {}
            await audit.append(
                session,
                audit.Entry(
                    actor=actor,
                    action="role.granted" if grant else "role.revoked",
                    subscription_id=None if scope == ALL_SUBSCRIPTIONS else scope,
                    data={"user_id": user_id, "role": role, "scope": scope, **forced},
                ),
            )
            await owners.announce(
                session,
                notify,
                user_id=user_id,
                role=role,
                scope=scope,
                actor=actor,
                granted=grant,
                orphans=orphans,
            )
    return RoleChange(scope, changed, tuple(sub.id for sub in orphans))


async def grant_role(db: Database, user_id: str, role: str, scope: str | None, **options: Any) -> bool:
    """`change_role` granting; `options`: actor, notify, authorise."""
    return (await change_role(db, user_id, role, scope, grant=True, **options)).changed


async def revoke_role(db: Database, user_id: str, role: str, scope: str | None, **options: Any) -> bool:
    """`change_role` revoking; `options`: actor, notify, authorise."""
    return (await change_role(db, user_id, role, scope, grant=False, **options)).changed


async def list_roles(db: Database, subscription: str | None = None) -> list[RoleAssignment]:
    """Every role assignment, or those that apply to one scope (its own and those on every subscription)."""
    async with db.read() as session:
        scope = None if subscription is None else await resolve_scope(session, subscription)
        return await store.role_assignments(session, scope)
