"""Where the bot's roles come from: its own role table (`local`) or Azure RBAC (`azure`).

A role source answers two questions, always about now: which of the bot's roles ("owner", "admin") a
Slack user holds on a subscription (`*`: on every subscription), and who holds a role there. Checks
(`bot.policy.check`), clicks, the approvers a request needs and reaches, the typeahead and App Home all
ask it. Before a transaction that will ask, the caller awaits `prepare`: a source that reads a remote
service (Azure) fetches there, bounded in time, so no remote call happens while a write transaction
holds the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Refusal
from storage import directory as store
from storage import home as home_table
from storage import requests as request_table
from storage.db import Database
from storage.models import Subscription

LOCAL, AZURE = "local", "azure"


class RolesUnavailable(Refusal):
    """The role source has not answered in time (or failed): nothing was decided, nothing written."""

    code = "roles_unavailable"


class NotLinked(Refusal):
    """With Azure as the role source, a Slack user who is linked to no Microsoft Entra object ID."""

    code = "not_linked"


class RolesFromAzure(Refusal):
    """The bot's role table is not used: roles are assigned in Azure."""

    code = "roles_from_azure"


def not_linked(user_id: str) -> NotLinked:
    return NotLinked(
        "dpor-bot takes roles from Azure RBAC, and your Slack account is not linked to an Azure "
        "identity yet. "
        f"Ask the operator to run `dpor-bot people link {user_id} YOUR_OBJECT_ID_OR_UPN`, then try again."
    )


ROLES_FROM_AZURE = (
    "Roles come from Azure RBAC (DPOR_ROLE_SOURCE=azure): assign Owner (to approve) or Contributor "
    "(to request) on the subscription in Azure, and ask the operator to link the person's Slack account "
    "with `dpor-bot people link`."
)


class RoleSource(Protocol):
    name: str  # "local" or "azure"

    async def prepare(
        self,
        actor: str | None,
        subscriptions: Sequence[str | None],
        others: Sequence[str] = (),
        *,
        everyone: bool = False,
    ) -> None:
        """Make the roles of `actor` and `others` (`everyone`: of every person who may hold one) on these
        subscriptions (IDs or aliases; None or `*`: every one) ready to read. Raises NotLinked (the actor
        cannot hold a role) or RolesUnavailable (not in time). An unknown reference is left to the caller."""

    async def roles(self, session: AsyncSession, user_id: str, subscription_id: str) -> frozenset[str]:
        """The bot's roles the user holds on the subscription now (`*`: on every subscription)."""

    async def holders(self, session: AsyncSession, role: str, subscription_id: str) -> list[str]:
        """The Slack users who hold the role on the subscription now, in user-id order."""

    async def role_list(self, session: AsyncSession, user_id: str) -> list[tuple[str, str]]:
        """Every role the user holds, as (role, scope), for App Home."""


class LocalRoles:
    """The bot's own role table (`dpor-bot roles grant`, `/dpor role grant`): the embedded default."""

    name = LOCAL

    async def prepare(
        self,
        actor: str | None,
        subscriptions: Sequence[str | None],
        others: Sequence[str] = (),
        *,
        everyone: bool = False,
    ) -> None:
        return None

    async def roles(self, session: AsyncSession, user_id: str, subscription_id: str) -> frozenset[str]:
        return frozenset(await store.roles_for(session, user_id, subscription_id))

    async def holders(self, session: AsyncSession, role: str, subscription_id: str) -> list[str]:
        return await store.holders(session, role, subscription_id)

    async def role_list(self, session: AsyncSession, user_id: str) -> list[tuple[str, str]]:
        return await home_table.roles_of(session, user_id)


LOCAL_ROLES = LocalRoles()


async def current_owner_approvals(
    session: AsyncSession,
    source: RoleSource,
    request_id: int,
    subscription_id: str,
    approved: Sequence[str] | None = None,
) -> list[str]:
    """Who approved the request, in order, among the people who are owners of the subscription now.
    `approved`: the approvers in order, when the caller has read them already."""
    if approved is None:
        approved = [who for who, _ in await request_table.approvals(session, request_id)]
    if isinstance(source, LocalRoles):
        owners = set(await source.holders(session, "owner", subscription_id))
        return [user for user in approved if user in owners]
    return [user for user in approved if "owner" in await source.roles(session, user, subscription_id)]


async def prepare_request(db: Database, source: RoleSource, user_id: str, request_id: int | str) -> None:
    """Before a click's or a cancel's write transaction: the roles of the clicker, of the requester and of
    those who approved it already on the request's subscription, made ready (nothing for the bot's own
    table; a bad ID is left to the transaction, which refuses it in its own words). The approvers too: a
    click counts only the approvals of people who are owners now (`current_owner_approvals`), and asking
    Azure about them in the transaction would hold the database while ARM answers."""
    if source.name == LOCAL:
        return
    try:
        number = int(str(request_id).strip().lstrip("#"))
    except ValueError:
        return
    async with db.read() as session:
        req = await request_table.get(session, number)
        if req is None:
            return
        sub_id, requester = req.subscription_id, req.requester_id
        approvers = [who for who, _ in await request_table.approvals(session, number)]
    await source.prepare(user_id, [sub_id], [requester, *approvers])


@dataclass(frozen=True)
class Holders:
    """Who holds the bot's roles on one subscription, as the role source says (`/dpor role list SUB`)."""

    subscription: Subscription
    owners: list[str]
    admins: list[str]


async def holders_on(db: Database, source: RoleSource, user_id: str, ref: str) -> Holders:
    """The owners and admins of one subscription (ID or alias) now, every linked person asked."""
    from bot.directory import resolve_subscription

    await source.prepare(None, [ref], everyone=True)
    async with db.read() as session:
        sub = await resolve_subscription(session, ref)
        owners = await source.holders(session, "owner", sub.id)
        admins = [u for u in await source.holders(session, "admin", sub.id) if u not in owners]
    return Holders(sub, owners, admins)
