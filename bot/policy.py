"""Who may do what: the one authorisation table, the checks that read it, and the approval-flow knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from bot.directory import resolve_scope
from bot.errors import NotAuthorised, NotOwner, Refusal
from bot.roles import LOCAL_ROLES, RoleSource
from bot.settings import Settings
from storage.db import Database
from storage.directory import subscription_by_id
from storage.models import ALL_SUBSCRIPTIONS, Subscription

# Every act on a subscription, and the roles that allow it there (a role on `*` counts everywhere).
PERMISSIONS: dict[str, frozenset[str]] = {
    "request": frozenset({"owner", "admin"}),
    "approve": frozenset({"owner"}),
    "reject": frozenset({"owner"}),
    "retry": frozenset({"owner"}),
    # Saying on the card that a change was made in the Azure portal, or could not be (the portal provider).
    "attest": frozenset({"owner"}),
    # The requester may always cancel their own pending request; otherwise an owner may.
    "cancel": frozenset({"owner"}),
    "manage_roles": frozenset({"owner"}),
    # A channel's notifications are routed (and stopped) by someone answerable for what they report.
    "subscribe": frozenset({"owner", "admin"}),
    "unsubscribe": frozenset({"owner", "admin"}),
}

_WHO = {frozenset({"owner"}): "an owner", frozenset({"owner", "admin"}): "an owner or admin"}


def allowed(act: str, roles: set[str] | frozenset[str]) -> bool:
    return bool(PERMISSIONS[act] & roles)


def who_may(act: str) -> str:
    """The roles an act needs, as words for a refusal: "an owner", "an owner or admin"."""
    return _WHO[PERMISSIONS[act]]


async def check(
    session: AsyncSession,
    act: str,
    user_id: str,
    subscription: Subscription | None,
    *,
    refusal: str = "",
    error: type[Refusal] | None = None,
    roles: RoleSource = LOCAL_ROLES,
) -> None:
    """Refuse unless the user holds, now, a role that allows `act` on the subscription (None: on `*`),
    as the role source says (`roles`: the policy's; its `prepare` awaited before the transaction)."""
    scope = ALL_SUBSCRIPTIONS if subscription is None else subscription.id
    if allowed(act, await roles.roles(session, user_id, scope)):
        return
    where = (
        "every subscription"
        if subscription is None
        else f"subscription {subscription.name} (`{subscription.id}`)"
    )
    if error is None:
        error = NotOwner if PERMISSIONS[act] == frozenset({"owner"}) else NotAuthorised
    raise error(refusal or f"Only {who_may(act)} of {where} can do that.")


async def check_scope(
    session: AsyncSession, act: str, user_id: str, scope: str, roles: RoleSource = LOCAL_ROLES
) -> None:
    """`check` on a resolved scope (a subscription's ID, or `*`)."""
    sub = None if scope == ALL_SUBSCRIPTIONS else await subscription_by_id(session, scope)
    await check(session, act, user_id, sub, roles=roles)


async def require(
    db: Database, act: str, user_id: str, ref: str | None, roles: RoleSource = LOCAL_ROLES
) -> str:
    """`check` on a scope (a subscription's ID or alias; None, `*` or `all`: every subscription), in a
    read of its own, to refuse before anything else is done. Returns the scope. Not the check a write
    relies on: a role revoked while it waits to write is not seen here; that write checks again in its
    own transaction (`check_scope`)."""
    await roles.prepare(user_id, [ref])
    async with db.read() as session:
        scope = await resolve_scope(session, ref)
        await check_scope(session, act, user_id, scope, roles=roles)
    return scope


@dataclass(frozen=True)
class Policy:
    required_approvals: int = 1
    allow_self_approval: bool = False
    request_ttl: timedelta = timedelta(hours=72)
    approval_channel: str | None = None
    notify_channels: tuple[str, ...] = field(default_factory=tuple)
    audit_channel: str | None = None  # where the audit chain's checkpoints are published
    dm_approvers_max: int = 10  # DPOR_DM_APPROVERS_MAX: owners DMed when a request opens (0: none)
    # DPOR_ROLE_SOURCE: where every role read asks (bot/roles.py); the Bot sets the Azure one.
    roles: RoleSource = LOCAL_ROLES
    # DPOR_PROVIDER and DPOR_AZURE_RBAC_ROLE: what a card says approving grants (azure-rbac).
    provider: str = "ledger"
    rbac_role: str = "Contributor"

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            required_approvals=settings.required_approvals,
            allow_self_approval=settings.allow_self_approval,
            request_ttl=settings.request_ttl,
            approval_channel=settings.approval_channel,
            notify_channels=tuple(settings.notify_channels),
            audit_channel=settings.audit_channel or None,
            dm_approvers_max=settings.dm_approvers_max,
            provider=settings.provider,
            rbac_role=settings.azure_rbac_role,
        )
