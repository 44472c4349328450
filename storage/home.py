"""What a person's App Home reads: their roles, what waits for them, their requests, what they own, and
for owners the outbox rows given up on and the drift reconcile found. Each list is capped by the caller
and comes with its total, so the Home can say how many it left out."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Select, and_, exists, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import (
    ALL_SUBSCRIPTIONS,
    OPEN_STATUSES,
    Approval,
    AuditEvent,
    ChangeRequest,
    OutboxMessage,
    Partner,
    RequestStatus,
    RoleAssignment,
    Subscription,
)
from storage.outbox import DEAD


async def roles_of(session: AsyncSession, user_id: str) -> list[tuple[str, str]]:
    """Every role the user holds now, as (role, scope): a subscription ID or `*`."""
    rows = await session.execute(
        select(RoleAssignment.role, RoleAssignment.scope)
        .where(RoleAssignment.user_id == user_id)
        .order_by(RoleAssignment.role, RoleAssignment.scope)
    )
    return [(role, scope) for role, scope in rows]


def _in_scopes(column, scopes: Collection[str]):
    """`column` names one of these subscriptions; every subscription when `*` is among them."""
    return true() if ALL_SUBSCRIPTIONS in scopes else column.in_(list(scopes))


async def _page(session: AsyncSession, query: Select, limit: int) -> tuple[list, int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    return list((await session.scalars(query.limit(limit))).all()), total


async def waiting_for(
    session: AsyncSession,
    user_id: str,
    scopes: Collection[str],
    *,
    now: datetime,
    include_own: bool,
    team_id: str | None,
    limit: int,
) -> tuple[list[ChangeRequest], int]:
    """Pending, unexpired requests on these subscriptions that the user has not decided yet (their own
    left out unless `include_own`), oldest first; and how many there are."""
    if not scopes:
        return [], 0
    decided = exists().where(Approval.request_id == ChangeRequest.id, Approval.approver_id == user_id)
    where = [
        ChangeRequest.status == RequestStatus.PENDING,
        ChangeRequest.expires_at > now,
        _in_scopes(ChangeRequest.subscription_id, scopes),
        ~decided,
    ]
    if not include_own:
        where.append(ChangeRequest.requester_id != user_id)
    if team_id is not None:
        where.append(ChangeRequest.team_id == team_id)
    return await _page(session, select(ChangeRequest).where(*where).order_by(ChangeRequest.id), limit)


async def requests_by(
    session: AsyncSession, user_id: str, *, open_: bool, team_id: str | None, limit: int
) -> tuple[list[ChangeRequest], int]:
    """The user's own requests, newest first: the open ones, or the decided (closed) ones."""
    status = ChangeRequest.status.in_(OPEN_STATUSES)
    where = [ChangeRequest.requester_id == user_id, status if open_ else ~status]
    if team_id is not None:
        where.append(ChangeRequest.team_id == team_id)
    return await _page(session, select(ChangeRequest).where(*where).order_by(ChangeRequest.id.desc()), limit)


async def subscriptions_in(
    session: AsyncSession, scopes: Collection[str], *, limit: int
) -> tuple[list[tuple[Subscription, str | None]], int]:
    """These subscriptions (every one when `*` is among the scopes) by name, each with its partner's name."""
    if not scopes:
        return [], 0
    where = _in_scopes(Subscription.id, scopes)
    total = await session.scalar(select(func.count()).select_from(Subscription).where(where)) or 0
    rows = await session.execute(
        select(Subscription, Partner.name)
        .outerjoin(Partner, Partner.partner_id == Subscription.partner_id)
        .where(where)
        .order_by(Subscription.name, Subscription.id)
        .limit(limit)
    )
    return [(sub, name) for sub, name in rows], total


async def subscriptions_named(session: AsyncSession, ids: Collection[str]) -> dict[str, Subscription]:
    if not ids:
        return {}
    rows = await session.scalars(select(Subscription).where(Subscription.id.in_(list(ids))))
    return {s.id: s for s in rows}


async def dead_rows(
    session: AsyncSession, scopes: Collection[str], *, limit: int
) -> tuple[list[OutboxMessage], int]:
    """Outbox rows given up on, newest first. With `*` among the scopes, every one; otherwise those about a
    request on these subscriptions, or a notice (drift) about one of them."""
    if not scopes:
        return [], 0
    query = select(OutboxMessage).where(OutboxMessage.status == DEAD)
    if ALL_SUBSCRIPTIONS not in scopes:
        wanted = list(scopes)
        about_request = exists().where(
            ChangeRequest.id == OutboxMessage.payload["request_id"].as_integer(),
            ChangeRequest.subscription_id.in_(wanted),
        )
        about_notice = and_(
            OutboxMessage.kind == "notice",
            OutboxMessage.payload[("facts", "subscription_id")].as_string().in_(wanted),
        )
        query = query.where(or_(about_request, about_notice))
    return await _page(session, query.order_by(OutboxMessage.id.desc()), limit)


async def drift_events(
    session: AsyncSession, scopes: Collection[str], *, since: datetime, limit: int
) -> tuple[list[AuditEvent], int]:
    """`partner.drift` audit events on these subscriptions since `since`, newest first."""
    if not scopes:
        return [], 0
    query = select(AuditEvent).where(
        AuditEvent.action == "partner.drift",
        AuditEvent.at >= since,
        _in_scopes(AuditEvent.subscription_id, scopes),
    )
    return await _page(session, query.order_by(AuditEvent.seq.desc()), limit)
