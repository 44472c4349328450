"""Role changes' guard rail and announcement: no subscription left without an owner, and the channels
watching a subscription told who gained or lost a role there.

Called by `bot.directory.change_role` inside its transaction, after the assignment changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Refusal, person
from bot.outbox import Outbox
from storage import directory as store
from storage.models import ALL_SUBSCRIPTIONS, Subscription

# How many subscriptions a refusal names before it says "and N more".
NAMED = 5


class LastOwner(Refusal):
    """Revoking this owner role would leave a subscription with nobody to approve or manage its roles."""

    code = "last_owner"

    def __init__(self, message: str, orphans: Sequence[Subscription]) -> None:
        super().__init__(message)
        self.orphans = [sub.id for sub in orphans]  # their IDs: the rows go with the rolled-back session


async def left_without_owner(session: AsyncSession, scope: str) -> list[Subscription]:
    """After an owner role on `scope` was removed (in this transaction): the subscriptions with no owner
    now. A subscription's scope: that one, if nobody else owns it; `*`: every one nobody else owns."""
    if scope != ALL_SUBSCRIPTIONS:
        if await store.holders(session, "owner", scope):
            return []
        sub = await store.subscription_by_id(session, scope)
        return [] if sub is None else [sub]
    return await store.subscriptions_without(session, "owner")


def _ref(sub: Subscription) -> str:
    return sub.alias or sub.id


def _named(subs: Sequence[Subscription]) -> str:
    names = ", ".join(f"{sub.name} (`{sub.id}`)" for sub in subs[:NAMED])
    more = len(subs) - NAMED
    return names + (f" and {more} more" if more > 0 else "")


def last_owner(user_id: str, scope: str, orphans: Sequence[Subscription]) -> LastOwner:
    """The refusal: who, which subscriptions would be left without an owner, and what to do first."""
    who = person(user_id)
    first = orphans[0]
    if len(orphans) == 1:
        where = "every subscription" if scope == ALL_SUBSCRIPTIONS else first.name
        problem = (
            f"{who} is the last owner of {first.name} (`{first.id}`): revoking their owner role on {where} "
            "would leave nobody to approve its requests or manage its roles."
        )
    else:
        problem = (
            f"Revoking {who}'s owner role on every subscription would leave {len(orphans)} subscriptions "
            f"with no owner: {_named(orphans)}."
        )
    target = _ref(first) if len(orphans) == 1 else "all"
    return LastOwner(
        f"{problem} Grant another owner first: `/dpor role grant @someone owner {target}`.", orphans
    )


async def announce(
    session: AsyncSession,
    notify: Sequence[str],
    *,
    user_id: str,
    role: str,
    scope: str,
    actor: str,
    granted: bool,
    orphans: Sequence[Subscription] = (),
) -> None:
    """Queue the role change's notice for DPOR_NOTIFY_CHANNELS (`notify`) and the channels watching the
    scope (a `*` change: those watching every subscription), in the caller's transaction."""
    channels = list(dict.fromkeys([*notify, *await store.watching_channels(session, scope)]))
    if not channels:
        return
    sub = None if scope == ALL_SUBSCRIPTIONS else await store.subscription_by_id(session, scope)
    facts: dict[str, Any] = {
        "user_id": user_id,
        "role": role,
        "scope": scope,
        "subscription": sub.name if sub is not None else None,
        "alias": sub.alias if sub is not None else None,
        "actor": actor,
        "granted": granted,
        "forced": bool(orphans),
        "left_without_owner": [sub.name for sub in orphans[:NAMED]],
        "left_without_owner_count": len(orphans),
    }
    rows = Outbox()
    rows.role_change(channels, facts)
    await rows.flush(session)


class TooFewApprovers(Refusal):
    """A request nobody could ever approve enough: fewer eligible owners than DPOR_REQUIRED_APPROVALS."""

    code = "too_few_approvers"


def too_few_approvers(
    sub: Subscription, required: int, eligible: int, *, self_approval: bool
) -> TooFewApprovers:
    """The refusal of a request fewer people can approve than it needs: how many can, how many are needed,
    and what to do."""
    can = "nobody" if eligible == 0 else f"only {eligible} {'person' if eligible == 1 else 'people'}"
    mine = "" if self_approval else " (requesters do not approve their own requests)"
    approvals = f"{required} approval{'s' if required != 1 else ''}"
    return TooFewApprovers(
        f"{can.capitalize()} can approve requests for {sub.name} (`{sub.id}`){mine}, and each request needs "
        f"{approvals} (DPOR_REQUIRED_APPROVALS), so it could never be approved. An owner grants the owner "
        f"role to more people (`/dpor role grant @someone owner {_ref(sub)}`), or the operator lowers "
        "DPOR_REQUIRED_APPROVALS."
    )
