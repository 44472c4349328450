"""Removing reference data an operator added: a subscription or a partner of the directory.

Each is refused while a request needs it, and audited (`subscription.removed`, `partner.removed`) in the
same transaction as the removal. A subscription with any request on record is kept: its requests (and
their audit events) refer to it, and the history of who changed its partner must stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from bot import audit
from bot.directory import partner_id as valid_partner_id
from bot.directory import subscription_id as valid_subscription_id
from bot.errors import Conflict, OpenRequestExists, Refusal, UnknownSubscription
from storage import directory as store
from storage import requests
from storage.db import Database
from storage.principals import delete_principals


class UnknownPartner(Refusal):
    code = "unknown_partner"


def _cancel_hint(request_id: int) -> str:
    return f"`dpor-bot requests cancel {request_id} --reason TEXT`"


@dataclass(frozen=True)
class RemovedSubscription:
    id: str
    name: str
    roles: list[tuple[str, str]]  # (user, role) on this subscription, removed with it
    watches: list[str]  # channels that watched it


async def remove_subscription(db: Database, ref: str, *, actor: str) -> RemovedSubscription:
    """Remove a subscription that has no request on record, with the roles on it and the channels' watches.

    Roles on it go too: kept, they would apply again to a subscription added later with the same ID.
    """
    sid = valid_subscription_id(ref)
    try:
        async with db.write() as session:
            sub = await store.subscription_by_id(session, sid)
            if sub is None:
                raise UnknownSubscription(f"Subscription `{sid}` is not known to dpor-bot.")
            current = await requests.open_for(session, sid)
            if current is not None:
                raise OpenRequestExists(
                    f"Request #{current.id} for {sub.name} is still open: it must be decided, cancelled "
                    f"({_cancel_hint(current.id)}) or expire before the subscription can be removed.",
                    request_id=current.id,
                )
            count = await requests.count_for_subscription(session, sid)
            if count:
                raise Conflict(
                    f"Subscription {sub.name} (`{sid}`) has {count} request{'s' if count > 1 else ''} on "
                    "record, which refer to it: it stays, so that its history stays whole."
                )
            roles = await store.delete_roles_in_scope(session, sid)
            watches = await store.delete_watches_of(session, sid)
            await store.delete_subscription(session, sid)
            await audit.append(
                session,
                audit.Entry(
                    actor=actor,
                    action="subscription.removed",
                    subscription_id=sid,
                    data={
                        "name": sub.name,
                        "alias": sub.alias,
                        "provider": sub.provider,
                        "partner_id": sub.partner_id,
                        "roles": [{"user_id": user, "role": role} for user, role in roles],
                        "watches": watches,
                    },
                ),
            )
    except IntegrityError:
        # A request made in between (the foreign key refused the delete); nothing was written.
        raise Conflict(f"Subscription `{sid}` has a request on record now: it stays.") from None
    return RemovedSubscription(sid, sub.name, roles, watches)


async def remove_partner(db: Database, pid: str, *, actor: str) -> str:
    """Remove a partner from the directory unless an open request names it; returns the name it had."""
    pid = valid_partner_id(pid)
    async with db.write() as session:
        partner = await store.partner_by_id(session, pid)
        if partner is None:
            raise UnknownPartner(f"Partner `{pid}` is not in the partner directory.")
        naming = await requests.open_naming_partner(session, pid)
        if naming:
            numbers = ", ".join(f"#{r.id}" for r in naming)
            several = len(naming) > 1
            raise OpenRequestExists(
                f"Open request{'s' if several else ''} {numbers} name{'' if several else 's'} partner {pid} "
                f"({partner.name}), and approvers read its name from the directory: decide or cancel "
                f"{'them' if several else 'it'} ({_cancel_hint(naming[0].id)}) first.",
                request_id=naming[0].id,
            )
        name = partner.name
        linked = await delete_principals(session, pid)  # its PAL principals (azure-rbac) go with it
        await store.delete_partner(session, pid)
        data = {"partner_id": pid, "name": name, **({"principals": linked} if linked else {})}
        await audit.append(session, audit.Entry(actor=actor, action="partner.removed", data=data))
    return name
