"""Read models the Slack surface and the CLI share (lists are paged: Slack shows only so much)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage import direct, prepared
from storage.models import OPEN_STATUSES, AuditEvent, ChangeRequest, Partner, Subscription

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    offset: int

    @property
    def more(self) -> int:
        return max(0, self.total - self.offset - len(self.items))


async def partner_name(session: AsyncSession, partner_id: str | None) -> str | None:
    if not partner_id:
        return None
    return await session.scalar(_PARTNER_NAME, {"partner_id": partner_id})


_PARTNERS = Partner.__table__.c
_PARTNER_NAME = select(_PARTNERS.name).where(_PARTNERS.partner_id == bindparam("partner_id"))


async def providers_named(session: AsyncSession) -> list[str]:
    """The providers subscriptions name for themselves (beside DPOR_PROVIDER)."""
    rows = await session.scalars(
        select(Subscription.provider).where(Subscription.provider.is_not(None)).distinct()
    )
    return sorted(name for name in rows.all() if name)


async def all_subscriptions(session: AsyncSession) -> list[Subscription]:
    return list((await session.scalars(select(Subscription).order_by(Subscription.name))).all())


async def subscriptions_page(session: AsyncSession, *, limit: int, offset: int = 0) -> Page[Subscription]:
    total = await session.scalar(select(func.count()).select_from(Subscription)) or 0
    items = (
        await session.scalars(
            select(Subscription).order_by(Subscription.name, Subscription.id).limit(limit).offset(offset)
        )
    ).all()
    return Page(list(items), total, offset)


async def requests_page(
    session: AsyncSession,
    *,
    statuses: tuple[str, ...] | None = None,
    subscription_id: str | None = None,
    limit: int,
    offset: int = 0,
) -> Page[ChangeRequest]:
    """Requests, newest first, optionally filtered by status and subscription."""
    where = []
    if statuses:
        where.append(ChangeRequest.status.in_(statuses))
    if subscription_id:
        where.append(ChangeRequest.subscription_id == subscription_id)
    total = await session.scalar(select(func.count()).select_from(ChangeRequest).where(*where)) or 0
    items = (
        await session.scalars(
            select(ChangeRequest).where(*where).order_by(ChangeRequest.id.desc()).limit(limit).offset(offset)
        )
    ).all()
    return Page(list(items), total, offset)


async def subscriptions_by_id(session: AsyncSession, ids: set[str]) -> dict[str, Subscription]:
    if not ids:
        return {}
    rows = await session.scalars(select(Subscription).where(Subscription.id.in_(ids)))
    return {s.id: s for s in rows}


async def subscription_overview(
    session: AsyncSession, ref: str
) -> tuple[Subscription, str | None, ChangeRequest | None] | None:
    """A subscription by ID or alias, its partner's name and its open request, in one statement."""
    params = {"id": ref.lower(), "alias": ref}
    reader = direct.reader(session)
    if reader is not None:
        found = direct.rows(reader, _OVERVIEW_DIRECT, params)
        if not found:
            return None
        values, width = found[0], _SUBSCRIPTION.width
        open_request = values[width + 1 :]
        return (
            _SUBSCRIPTION.build(values[:width]),
            values[width],
            _REQUEST.build(open_request) if open_request[0] is not None else None,
        )
    row = (await session.execute(_OVERVIEW, params)).first()
    return (row[0], row[1], row[2]) if row else None


def _overview(*columns: Any) -> Select[Any]:
    return (
        select(*columns)
        .outerjoin(Partner, Partner.partner_id == Subscription.partner_id)
        .outerjoin(
            ChangeRequest,
            (ChangeRequest.subscription_id == Subscription.id)
            & prepared.one_of(ChangeRequest.status, OPEN_STATUSES),
        )
        .where((Subscription.id == bindparam("id")) | (Subscription.alias == bindparam("alias")))
        .limit(1)
    )


# Built once: `show` runs it at every call.
_OVERVIEW = _overview(Subscription, Partner.name, ChangeRequest)
_SUBSCRIPTION, _REQUEST = direct.Entity(Subscription), direct.Entity(ChangeRequest)
_OVERVIEW_DIRECT = direct.Query(_overview(*_SUBSCRIPTION.columns, Partner.name, *_REQUEST.columns))


async def request_events(session: AsyncSession, request_id: int) -> list[AuditEvent]:
    """The audit events about one request, in chain order."""
    rows = await session.scalars(
        select(AuditEvent).where(AuditEvent.request_id == request_id).order_by(AuditEvent.seq)
    )
    return list(rows.all())
