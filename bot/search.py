"""The set form's typeahead: the subscriptions a person may request a change for, and partners to pick.

Roles are read now, from the one authorisation table (`policy.PERMISSIONS["request"]`): someone who may
not request for a subscription is never offered it. What is typed is folded with NFKC first, so
fullwidth `ｐｒｏｄ` finds `prod` and fullwidth digits find a partner ID.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.errors import Refusal
from bot.policy import PERMISSIONS, allowed
from bot.roles import LOCAL, LOCAL_ROLES, RoleSource
from bot.text import clean
from storage import search
from storage.db import Database
from storage.models import Subscription
from storage.queries import all_subscriptions

# Slack shows at most 100 options in an external select.
MAX_OPTIONS = 100
# What a typed partner ID must be once folded: the validator's own shape, in ASCII digits only.
_TYPED_PARTNER_ID = re.compile(r"[0-9]{6,7}", re.ASCII)
_NEEDLE_LIMIT = 200


@dataclass(frozen=True)
class PartnerChoice:
    """A partner to offer: from the directory (with its name), or typed and not in it (`name` None)."""

    partner_id: str
    name: str | None


def fold(typed: str) -> str:
    """What someone typed into a typeahead, as it is searched for: cleaned as every typed text is (a NUL,
    which PostgreSQL refuses in a query, and the other control and invisible characters dropped), NFKC,
    trimmed, bounded."""
    return unicodedata.normalize("NFKC", clean(typed or "")).strip()[:_NEEDLE_LIMIT]


def typed_partner_id(typed: str) -> str | None:
    """The partner ID someone typed (6 or 7 digits once folded to ASCII), or None."""
    folded = fold(typed)
    return folded if _TYPED_PARTNER_ID.fullmatch(folded) else None


async def requestable(
    db: Database, user_id: str, typed: str, limit: int = MAX_OPTIONS, roles: RoleSource = LOCAL_ROLES
) -> list[Subscription]:
    """The subscriptions `user_id` may request a change for now, matching what they typed (name, alias
    or ID, in any case); none for someone without a role that may request. From Azure: every matching
    subscription asked about (bounded, cached); none while Azure has not answered or for someone unlinked."""
    if roles.name == LOCAL:
        async with db.read() as session:
            return await search.subscriptions_held(
                session, user_id=user_id, roles=PERMISSIONS["request"], needle=fold(typed), limit=limit
            )
    needle = fold(typed).lower()
    async with db.read() as session:
        subs = [
            sub
            for sub in await all_subscriptions(session)
            if not needle or any(needle in (text or "").lower() for text in (sub.name, sub.alias, sub.id))
        ]
    try:
        await roles.prepare(user_id, [sub.id for sub in subs])
    except Refusal:
        return []
    async with db.read() as session:
        held = [sub for sub in subs if allowed("request", await roles.roles(session, user_id, sub.id))]
    return sorted(held, key=lambda sub: (sub.name, sub.id))[:limit]


async def partners(db: Database, typed: str, limit: int = MAX_OPTIONS) -> list[PartnerChoice]:
    """Partners of the directory matching what was typed (name or ID). A typed partner ID that is not
    in the directory comes first, with no name, so it can be picked after a warning."""
    needle = fold(typed)
    typed_id = typed_partner_id(typed)
    async with db.read() as session:
        found = await search.partners_matching(session, needle=needle, limit=limit)
        exact = await search.partner(session, typed_id) if typed_id else None
    choices = [PartnerChoice(p.partner_id, p.name) for p in found]
    if typed_id is not None:
        head = PartnerChoice(typed_id, exact.name if exact else None)
        choices = [head, *(c for c in choices if c.partner_id != typed_id)]
    return choices[:limit]
