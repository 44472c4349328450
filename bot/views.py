"""Read models for the Slack surface: what a card, a `/dpor show` or a list shows, each from one read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot.approvers import eligible_approvers
from bot.directory import resolve_subscription
from bot.policy import Policy
from bot.principals import role_label
from bot.roles import RolesUnavailable, current_owner_approvals
from storage import directory, queries, requests
from storage import outbox as outbox_table
from storage.db import Database
from storage.models import (
    ALL_SUBSCRIPTIONS,
    OPEN_STATUSES,
    ChangeRequest,
    OutboxMessage,
    RoleAssignment,
    Subscription,
)
from storage.queries import Page

__all__ = [
    "ALL_SUBSCRIPTIONS",
    "CardView",
    "ChangeRequest",
    "Overview",
    "Page",
    "RoleAssignment",
    "Subscription",
]


@dataclass(frozen=True)
class CardView:
    """Everything a card (and a DM or notification about its request) shows, read at delivery time."""

    request: ChangeRequest
    subscription: Subscription
    current_name: str | None
    new_name: str | None
    # Who approved, in order: for a pending request only those who are owners now (they are what counts).
    approvers: list[str]
    required: int
    # Every approval (who, when), in order, owners now or not: what a decided card lists.
    approvals: list[tuple[str, datetime]] = field(default_factory=list)
    # The owners who can approve it now and have not yet: whom a reminder mentions.
    missing: list[str] = field(default_factory=list)
    # The subscription's provider, and the role approving gives the new partner's principal (azure-rbac).
    provider: str | None = None
    grant_role: str | None = None


@dataclass(frozen=True)
class Overview:
    subscription: Subscription
    partner_name: str | None
    open_request: ChangeRequest | None


async def card(db: Database, request_id: int, required: int, pol: Policy | None = None) -> CardView | None:
    pol = pol or Policy(required_approvals=required)
    async with db.read() as session:
        return await _card(session, request_id, pol)


async def card_delivery(
    db: Database, row: OutboxMessage, pol: Policy
) -> tuple[CardView | None, int | None]:
    """What delivering card row `row` shows, and the newest card row of its request waiting now (the
    delivery covers it), from one read: that row first, so the view is at least as new as it."""
    async with db.read() as session:
        covered = await outbox_table.newest_waiting(session, row.key, row.kind)
        return await _card(session, row.payload["request_id"], pol), covered


async def _card(session: AsyncSession, request_id: int, pol: Policy) -> CardView | None:
    found = await requests.with_subscription(session, request_id)
    if found is None:
        return None
    req, sub = found
    assert sub is not None  # a foreign key
    names = await directory.partner_names(session, [req.previous_partner_id, req.partner_id])
    approvals = await requests.approvals(session, req.id)
    try:
        approvers = await current_owner_approvals(
            session, pol.roles, req.id, sub.id, [who for who, _ in approvals]
        )
        eligible = await eligible_approvers(session, pol, sub.id, req.requester_id)
    except RolesUnavailable:  # Azure slow: the card shows the approvals recorded, not who is missing
        approvers, eligible = [who for who, _ in approvals], []
    return CardView(
        request=req,
        subscription=sub,
        current_name=names.get(req.previous_partner_id or ""),
        new_name=names.get(req.partner_id),
        approvers=approvers,
        required=pol.required_approvals,
        approvals=approvals,
        missing=[owner for owner in eligible if owner not in approvers],
        provider=sub.provider or pol.provider,
        grant_role=role_label(pol.rbac_role) if (sub.provider or pol.provider) == "azure-rbac" else None,
    )


async def overview(db: Database, ref: str) -> Overview:
    """`/dpor show`: a subscription by ID or alias, its partner's name and its open request."""
    async with db.read() as session:
        found = await queries.subscription_overview(session, ref.strip())
        if found is None:
            await resolve_subscription(session, ref)  # refuses, saying how to fix the reference
        assert found is not None
    return Overview(*found)


async def subscriptions(
    db: Database, *, limit: int, offset: int
) -> tuple[Page[Subscription], dict[str, str]]:
    async with db.read() as session:
        page = await queries.subscriptions_page(session, limit=limit, offset=offset)
        names = await directory.partner_names(session, [s.partner_id for s in page.items])
    return page, names


async def history(
    db: Database, ref: str, *, limit: int, offset: int
) -> tuple[Subscription, Page[ChangeRequest]]:
    async with db.read() as session:
        sub = await resolve_subscription(session, ref)
        page = await queries.requests_page(session, subscription_id=sub.id, limit=limit, offset=offset)
    return sub, page


async def pending(
    db: Database, *, limit: int, offset: int
) -> tuple[Page[ChangeRequest], dict[str, Subscription]]:
    async with db.read() as session:
        page = await queries.requests_page(session, statuses=OPEN_STATUSES, limit=limit, offset=offset)
        subs = await queries.subscriptions_by_id(session, {r.subscription_id for r in page.items})
    return page, subs


async def subscriptions_named(db: Database, ids: set[str]) -> dict[str, Subscription]:
    async with db.read() as session:
        return await queries.subscriptions_by_id(session, ids)
