"""Change requests and their approvals: each statement the state machine runs, named for what it does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, inspect, or_, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from storage import direct, directory, prepared
from storage.models import (
    OPEN_STATUSES,
    Approval,
    ChangeRequest,
    RequestStatus,
    Subscription,
    utcnow,
)

# By primary key with statements built once: `session.get` builds and keys its query at every call.
_REQUEST = select(ChangeRequest).where(ChangeRequest.id == bindparam("id"))
_REQUEST_LOCKED = _REQUEST.with_for_update()


async def get(session: AsyncSession, request_id: int, *, lock: bool = False) -> ChangeRequest | None:
    """A request by number; `lock`: its row locked until the transaction ends (PostgreSQL's FOR UPDATE,
    what a request's own transaction decides under; SQLite's writer already runs alone)."""
    query = _REQUEST_LOCKED if lock else _REQUEST
    return (await session.execute(query, {"id": request_id})).scalar_one_or_none()


async def with_subscription(
    session: AsyncSession, request_id: int
) -> tuple[ChangeRequest, Subscription | None] | None:
    """A request and its subscription in one statement (what a card and an apply read first); the
    subscription is None if its row is gone (a foreign key keeps it, but an apply still falls back)."""
    reader = direct.reader(session)
    if reader is not None:
        found = direct.rows(reader, _WITH_SUBSCRIPTION_DIRECT, {"id": request_id})
        if not found:
            return None
        values, width = found[0], _REQUEST_ENTITY.width
        sub = _SUBSCRIPTION_ENTITY.build(values[width:]) if values[width] is not None else None
        return _REQUEST_ENTITY.build(values[:width]), sub
    row = (await session.execute(_WITH_SUBSCRIPTION, {"id": request_id})).first()
    return (row[0], row[1]) if row is not None else None


_WITH_SUBSCRIPTION = (
    select(ChangeRequest, Subscription)
    .outerjoin(Subscription, Subscription.id == ChangeRequest.subscription_id)
    .where(ChangeRequest.id == bindparam("id"))
)
_REQUEST_ENTITY = direct.Entity(ChangeRequest)
_SUBSCRIPTION_ENTITY = direct.Entity(Subscription)
_WITH_SUBSCRIPTION_DIRECT = direct.Query(
    select(*_REQUEST_ENTITY.columns, *_SUBSCRIPTION_ENTITY.columns)
    .outerjoin(Subscription, Subscription.id == ChangeRequest.subscription_id)
    .where(ChangeRequest.id == bindparam("id"))
)


async def open_for(session: AsyncSession, subscription_id: str) -> ChangeRequest | None:
    """The subscription's open request (pending, approved or applying), if any."""
    return (await session.scalars(_OPEN_FOR, {"subscription_id": subscription_id})).first()


_OPEN_FOR = select(ChangeRequest).where(
    ChangeRequest.subscription_id == bindparam("subscription_id"),
    prepared.one_of(ChangeRequest.status, OPEN_STATUSES),
)


async def newer_than(session: AsyncSession, req: ChangeRequest) -> ChangeRequest | None:
    """The newest request for the same subscription made after `req`, in any state."""
    return (
        await session.scalars(
            select(ChangeRequest)
            .where(ChangeRequest.subscription_id == req.subscription_id, ChangeRequest.id > req.id)
            .order_by(ChangeRequest.id.desc())
            .limit(1)
        )
    ).first()


async def insert(session: AsyncSession, **values: Any) -> ChangeRequest:
    """Add a request and flush, so it has its id (the partial unique index may refuse it here)."""
    req = ChangeRequest(**values)
    session.add(req)
    await session.flush()
    return req


_REQUESTS = ChangeRequest.__table__
# Each attribute and where its column comes in a row of the table (what `move`'s RETURNING gives).
_COLUMNS = [
    (prop.key, list(_REQUESTS.c).index(prop.columns[0])) for prop in inspect(ChangeRequest).column_attrs
]


async def move(session: AsyncSession, req: ChangeRequest, expected: str, new: str, **values: Any) -> bool:
    """UPDATE ... WHERE id = :id AND status = :expected, and `req` as its row is now (who decided first,
    when the UPDATE found it moved already); False when someone else moved it first. One statement where
    the database returns the row it updated, the UPDATE and a read of the row where it cannot."""
    where = {"id": req.id, "status": expected}
    values = {"status": new, "updated_at": utcnow(), **values}
    if not prepared.can_return(session):
        moved = await prepared.update_where(session, _REQUESTS, where, values) == 1
        await session.refresh(req)
        return moved
    row = await prepared.update_returning(session, _REQUESTS, where, values)
    if row is None:
        await session.refresh(req)
        return False
    for key, position in _COLUMNS:
        set_committed_value(req, key, row[position])
    return True


_APPROVALS = Approval.__table__.c
_DECISION_OF = select(_APPROVALS.decision).where(
    _APPROVALS.request_id == bindparam("request_id"), _APPROVALS.approver_id == bindparam("user_id")
)
_APPROVED_BY = (
    select(_APPROVALS.approver_id, _APPROVALS.at)
    .where(_APPROVALS.request_id == bindparam("request_id"), _APPROVALS.decision == "approve")
    .order_by(_APPROVALS.id)
)


async def decision_of(session: AsyncSession, request_id: int, user_id: str) -> str | None:
    """What this person already decided on the request (approve or reject), if anything."""
    params = {"request_id": request_id, "user_id": user_id}
    lane = direct.lane(session)
    if lane is not None:
        found = direct.rows(lane, direct.query(_DECISION_OF), params)
        return found[0][0] if found else None
    return await session.scalar(_DECISION_OF, params)


async def add_decision(session: AsyncSession, request_id: int, user_id: str, decision: str) -> None:
    row = {"request_id": request_id, "approver_id": user_id, "decision": decision}
    lane = direct.lane(session)
    if lane is not None:
        direct.insert(lane, Approval.__table__, [row])
        return
    await session.execute(_ADD_DECISION, row)


_ADD_DECISION = insert_into(Approval.__table__)  # built once; an ORM add and flush cost several times more


async def approvals(session: AsyncSession, request_id: int) -> list[tuple[str, datetime]]:
    """Every approval (who, when), in order: what a decided card lists."""
    params = {"request_id": request_id}
    lane = direct.lane(session)
    rows = (
        direct.rows(lane, direct.query(_APPROVED_BY), params)
        if lane
        else await session.execute(_APPROVED_BY, params)
    )
    return [(who, at) for who, at in rows]


async def decisions(session: AsyncSession, request_id: int) -> list[Approval]:
    """Every decision on the request (approvals and rejections), in order: what `requests show` lists."""
    return list(
        (
            await session.scalars(
                select(Approval).where(Approval.request_id == request_id).order_by(Approval.id)
            )
        ).all()
    )


async def open_naming_partner(session: AsyncSession, partner_id: str) -> list[ChangeRequest]:
    """Open requests whose card names this partner, as the new one or the one it replaces."""
    return list(
        (
            await session.scalars(
                select(ChangeRequest)
                .where(
                    ChangeRequest.status.in_(OPEN_STATUSES),
                    (ChangeRequest.partner_id == partner_id)
                    | (ChangeRequest.previous_partner_id == partner_id),
                )
                .order_by(ChangeRequest.id)
            )
        ).all()
    )


async def count_for_subscription(session: AsyncSession, subscription_id: str) -> int:
    """How many requests, in any state, a subscription has on record."""
    return (
        await session.scalar(
            select(func.count())
            .select_from(ChangeRequest)
            .where(ChangeRequest.subscription_id == subscription_id)
        )
        or 0
    )


async def due_to_expire(session: AsyncSession, now: datetime, limit: int) -> list[int]:
    return list(
        (
            await session.scalars(
                select(ChangeRequest.id)
                .where(ChangeRequest.status == RequestStatus.PENDING, ChangeRequest.expires_at <= now)
                .order_by(ChangeRequest.expires_at)
                .limit(limit)
            )
        ).all()
    )


async def mark_reminded(session: AsyncSession, now: datetime, waiting_since: datetime) -> list[int]:
    """Mark pending requests created before `waiting_since` and never reminded; returns their ids.

    A conditional UPDATE, so several processes sweeping at once remind each request once.
    """
    return sorted(
        (
            await session.scalars(
                update(ChangeRequest)
                .where(
                    ChangeRequest.status == RequestStatus.PENDING,
                    ChangeRequest.reminded_at.is_(None),
                    ChangeRequest.created_at <= waiting_since,
                    ChangeRequest.expires_at > now,
                    ChangeRequest.card_channel.is_not(None),
                )
                .values(reminded_at=now)
                .returning(ChangeRequest.id)
            )
        ).all()
    )


async def mark_attestation_reminded(
    session: AsyncSession, now: datetime, waiting_since: datetime
) -> list[int]:
    """Mark approved requests waiting for an owner to attest the Azure portal change (the portal provider)
    since before `waiting_since`, or last reminded before it: reminded every DPOR_REMIND_AFTER until done.
    Returns their ids (each once per sweep, as above)."""
    return sorted(
        (
            await session.scalars(
                update(ChangeRequest)
                .where(
                    ChangeRequest.status == RequestStatus.APPLYING,
                    ChangeRequest.result["awaiting"].as_string() == "attestation",
                    or_(
                        and_(ChangeRequest.reminded_at.is_(None), ChangeRequest.updated_at <= waiting_since),
                        ChangeRequest.reminded_at <= waiting_since,
                    ),
                    ChangeRequest.card_channel.is_not(None),
                )
                .values(reminded_at=now)
                .returning(ChangeRequest.id)
            )
        ).all()
    )


_RECORD_CARD = (
    update(_REQUESTS)
    .where(_REQUESTS.c.id == bindparam("request_id"), _REQUESTS.c.card_ts.is_(None))
    .values(card_channel=bindparam("channel"), card_ts=bindparam("ts"))
)


async def record_card(session: AsyncSession, request_id: int, channel: str, ts: str) -> None:
    """Where Slack posted the request's card (set once: a later post never moves it)."""
    await session.execute(_RECORD_CARD, {"request_id": request_id, "channel": channel, "ts": ts})


async def set_partner(session: AsyncSession, subscription_id: str, partner_id: str, at: datetime) -> None:
    """The subscription's partner of record, as the bot applied it."""
    # Through the ORM, once per apply: a Subscription the session already holds (an attestation's
    # checks read it) shows the new partner too.
    await session.execute(
        update(Subscription)
        .where(Subscription.id == subscription_id)
        .values(partner_id=partner_id, partner_set_at=at)
    )


async def subscription(session: AsyncSession, subscription_id: str) -> Subscription | None:
    return await directory.subscription_by_id(session, subscription_id)


async def applying_for(session: AsyncSession, subscription_id: str, partner_id: str) -> ChangeRequest | None:
    """The request being applied that sets this partner on this subscription (what a provider is told of)."""
    return (
        await session.scalars(
            select(ChangeRequest)
            .where(
                ChangeRequest.subscription_id == subscription_id,
                ChangeRequest.partner_id == partner_id,
                ChangeRequest.status == RequestStatus.APPLYING,
            )
            .order_by(ChangeRequest.id.desc())
        )
    ).first()


async def in_flight(session: AsyncSession) -> dict[str, int]:
    """Subscriptions with an approved or applying request, and that request's id."""
    rows = await session.execute(
        select(ChangeRequest.subscription_id, ChangeRequest.id).where(
            ChangeRequest.status.in_((RequestStatus.APPROVED, RequestStatus.APPLYING))
        )
    )
    return dict(rows.all())
