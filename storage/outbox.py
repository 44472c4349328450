"""The outbox table: rows written with the state they follow from, claimed under a lease, recorded, buried."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import Integer, Select, and_, bindparam, exists, func, insert, or_, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import direct, prepared
from storage.models import ChangeRequest, OutboxMessage, is_postgresql, utcnow
from storage.notify import notify_outbox

PENDING, DONE, DEAD = "pending", "done", "dead"
# A dead row an operator gave up on for good (`dpor-bot outbox discard`): kept, with its last error, but no
# longer counted dead (the gauge, the alert, the Home) nor retried.
DISCARDED = "discarded"
CARD = "card"  # bot.outbox.CARD: the row that posts or updates a request's approval card
# Kinds of rows whose Slack channel is the request's card channel rather than a `channel` in the payload.
CARD_CHANNEL_KINDS = (CARD, "remind")


async def insert_rows(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Rows of `{"kind", "key", "payload"}` (and any other column), inserted in the order given; on
    PostgreSQL every process's worker is woken when the transaction commits (NOTIFY dpor_outbox)."""
    if not rows:
        return
    # One Core INSERT built once (the ORM's bulk INSERT is built at each call), executed once per run of
    # rows naming the same columns; runs keep the rows' order, which is their delivery order within a key.
    lane = direct.lane(session)
    for _, run in itertools.groupby(rows, key=lambda row: frozenset(row)):
        if lane is not None:
            direct.insert(lane, _OUTBOX, list(run))
        else:
            await session.execute(_INSERT, list(run))
    await notify_outbox(session)


_INSERT = insert(OutboxMessage.__table__)
_ROW = direct.Entity(OutboxMessage)


# A row waits while an earlier row of its key is pending, but a card's update waits only for the card's
# earlier rows (its post, its earlier updates), not for the steps queued for its thread: the card shows
# the request's state at once, and the thread follows. So the rows a claim may take are the first waiting
# row of each key and the first waiting card row of each key: read in one pass over the waiting rows in
# key order (ix_outbox_waiting), not a probe for earlier rows per waiting row. Built once.
_OUTBOX = OutboxMessage.__table__
_WAITING = OutboxMessage.status == PENDING
_FIRST = select(func.min(OutboxMessage.id)).group_by(OutboxMessage.key)
_FIRST_OF_KEY = union(_FIRST.where(_WAITING), _FIRST.where(_WAITING, OutboxMessage.kind == CARD))


@cache
def _claimable(held: bool, skip_locked: bool, columns: bool = False) -> Select[Any]:
    """The claim's query, built once per variant (building and keying it cost about 0.5 ms a claim);
    `columns`: of the row's columns rather than of the entity (storage.direct)."""
    now = bindparam("now", type_=OutboxMessage.available_at.type)
    query = (
        (select(*_ROW.columns) if columns else select(OutboxMessage))
        .where(
            OutboxMessage.id.in_(_FIRST_OF_KEY),
            # Checked again on each row found (PostgreSQL re-reads a row another process just changed);
            # `|| ''` keeps SQLite's planner on the ids above rather than on every waiting row again.
            (OutboxMessage.status + "") == PENDING,
            OutboxMessage.available_at <= now,
            or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
        )
        .order_by(OutboxMessage.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if held:
        query = query.where(OutboxMessage.id.not_in(bindparam("held", expanding=True)))
    if skip_locked:
        query = query.with_for_update(skip_locked=True, of=OutboxMessage)
    return query


def _mine(ids: Sequence[int], owner: str):
    """The rows among `ids` that `owner` still holds: the clause every lease write is conditional on."""
    return and_(OutboxMessage.id.in_(ids), OutboxMessage.claimed_by == owner, OutboxMessage.status == PENDING)


async def claim(
    session: AsyncSession,
    owner: str,
    lease: timedelta,
    limit: int,
    *,
    skip_locked: bool,
    held: Sequence[int] = (),
) -> list[OutboxMessage]:
    """Take up to `limit` due rows for `owner` until the lease runs out; each claim counts as an attempt.

    Rows sharing a key go one at a time, in id order (a card's post before its updates; its updates pass
    the steps waiting for its thread: `_FIRST_OF_KEY`). On PostgreSQL rows another process is claiming are
    skipped, not waited for (SQLite's write lock already serialises claims). `held`: rows the caller is
    still delivering, never taken again by it even when their lease lapsed (another process may).
    """
    now = utcnow()
    params: dict[str, Any] = {"now": now, "limit": limit}
    if held:
        params["held"] = list(held)
    # The rows are only read (the claim's UPDATE is Core): built from their columns where the write may
    # run directly (storage.direct), as the ORM would load them.
    lane = None if skip_locked else direct.lane(session)
    if lane is not None:
        found = direct.rows(lane, direct.query(_claimable(bool(held), skip_locked, True)), params)
        rows = [_ROW.build(values) for values in found]
    else:
        rows = list((await session.scalars(_claimable(bool(held), skip_locked), params)).all())
    if rows:
        params = {"ids": [r.id for r in rows], "owner": owner, "until": now + lease}
        if lane is not None:
            direct.count(lane, direct.query(_CLAIM), params)
        else:
            await session.execute(_CLAIM, params)
    return rows


_CLAIM = (
    update(_OUTBOX)
    .where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        claimed_by=bindparam("owner"),
        claimed_until=bindparam("until", type_=_OUTBOX.c.claimed_until.type),
        attempts=_OUTBOX.c.attempts + 1,
    )
)


async def renew(session: AsyncSession, ids: Sequence[int], owner: str, lease: timedelta) -> None:
    """Extend the lease of the rows among `ids` that `owner` still holds. On PostgreSQL a row another
    transaction has locked (its outcome being written) is skipped, not waited for: waiting, the renewal
    and a batch of outcomes settling the same rows in another order deadlocked under load (PostgreSQL
    finds it after a second, aborts one of them, and the worker's outcomes stall meanwhile)."""
    mine = _mine(ids, owner)
    if is_postgresql(session):
        free = select(OutboxMessage.id).where(mine).with_for_update(skip_locked=True)
        mine = OutboxMessage.id.in_(free.scalar_subquery())
    await session.execute(
        update(OutboxMessage)
        .where(mine)
        .values(claimed_until=utcnow() + lease)
        .execution_options(synchronize_session=False)
    )


async def release(session: AsyncSession, ids: Sequence[int], owner: str) -> None:
    """Give rows back unattempted (shutting down before their delivery finished)."""
    await session.execute(
        update(OutboxMessage)
        .where(_mine(ids, owner))
        .values(claimed_by=None, claimed_until=None, attempts=OutboxMessage.attempts - 1)
        .execution_options(synchronize_session=False)
    )
    await notify_outbox(session)  # another process delivers them now, not at its next poll


class Settled(NamedTuple):
    """A row's outcome, as `settle` wrote it."""

    settled: bool  # False: another process took the row over (its lease had lapsed)
    # Rows of its key wait that no worker holds (a row in a worker's hands wakes that worker when it
    # ends): what this row may have held up. True too where it was not asked (no key, SQLite < 3.35).
    followed: bool


async def settle(
    session: AsyncSession, row_id: int, owner: str, status: str, *, key: str | None = None, **values: Any
) -> Settled:
    """Record a row's outcome; with its `key`, say too whether rows of that key wait (in the same
    statement, where the database answers UPDATE ... RETURNING)."""
    where = {"id": row_id, "claimed_by": owner}
    changed = {"status": status, "claimed_by": None, "claimed_until": None, **values}
    if key is None or not prepared.can_return(session):
        return Settled(await prepared.update_where(session, _OUTBOX, where, changed) == 1, True)
    row = await prepared.update_returning(session, _OUTBOX, where, changed, _FOLLOWED, {"p_key": key})
    return Settled(False, True) if row is None else Settled(True, bool(row[0]))


_BEHIND = _OUTBOX.alias("behind")
# Bound rather than correlated: SQLite's compiler writes RETURNING's columns unqualified.
_FOLLOWED = (
    exists()
    .where(
        _BEHIND.c.key == bindparam("p_key"),
        _BEHIND.c.status == PENDING,
        _BEHIND.c.claimed_by.is_(None),
        _BEHIND.c.id != bindparam("w_id"),
    )
    .label("followed"),
)


async def hold_channel(session: AsyncSession, channel: str, until: datetime) -> None:
    """Slack answered 429 for `channel`: every waiting row for it waits until `until`, in every process."""
    card_requests = select(ChangeRequest.id).where(ChangeRequest.card_channel == channel)
    for_channel = or_(
        OutboxMessage.payload["channel"].as_string() == channel,
        and_(
            OutboxMessage.kind.in_(CARD_CHANNEL_KINDS),
            OutboxMessage.payload["request_id"].as_integer().in_(card_requests),
        ),
    )
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.status == PENDING, OutboxMessage.available_at < until, for_channel)
        .values(available_at=until)
        .execution_options(synchronize_session=False)
    )


async def newest_waiting(session: AsyncSession, key: str, kind: str) -> int | None:
    """The id of the newest waiting row of this key and kind (a card delivery covers up to it)."""
    lane = direct.lane(session)
    if lane is not None:
        return direct.rows(lane, direct.query(_NEWEST_WAITING), {"key": key, "kind": kind})[0][0]
    return await session.scalar(_NEWEST_WAITING, {"key": key, "kind": kind})


_NEWEST_WAITING = select(func.max(_OUTBOX.c.id)).where(
    _OUTBOX.c.key == bindparam("key"), _OUTBOX.c.kind == bindparam("kind"), _OUTBOX.c.status == PENDING
)


async def cover(session: AsyncSession, key: str, kind: str, after: int, upto: int) -> None:
    """Mark waiting rows (after, upto] of a key done: the delivery of row `after` already showed them."""
    params = {"w_key": key, "w_kind": kind, "after": after, "upto": upto, "at": utcnow()}
    params["error"] = f"covered by row {after}"
    lane = direct.lane(session)
    if lane is not None:
        direct.count(lane, direct.query(_COVER), params)
        return
    await session.execute(_COVER, params)


_COVER = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.key == bindparam("w_key"),  # not a column's name: an UPDATE's SET reserves those
        _OUTBOX.c.kind == bindparam("w_kind"),
        _OUTBOX.c.id > bindparam("after"),
        _OUTBOX.c.id <= bindparam("upto"),
        _OUTBOX.c.status == PENDING,
    )
    .values(
        status=DONE,
        delivered_at=bindparam("at", type_=_OUTBOX.c.delivered_at.type),
        last_error=bindparam("error"),
    )
)


async def undelivered(session: AsyncSession, statuses: Sequence[str]) -> list[OutboxMessage]:
    query = select(OutboxMessage).where(OutboxMessage.status.in_(statuses)).order_by(OutboxMessage.id)
    return list((await session.scalars(query)).all())


async def statuses_of(session: AsyncSession, ids: Sequence[int] | None) -> dict[int, str]:
    """Status by id of these rows (those that exist), or of every dead row when `ids` is None, locked until
    the transaction ends: `outbox retry` and `outbox discard` write what they checked, so one that reads a
    row dead while the other is setting it aside waits for it and reads it again (on PostgreSQL; SQLite's
    writer already runs alone), rather than answer for a row it then leaves as the other left it."""
    query = select(OutboxMessage.id, OutboxMessage.status).order_by(OutboxMessage.id).with_for_update()
    if ids is None:
        query = query.where(OutboxMessage.status == DEAD)
    else:
        query = query.where(OutboxMessage.id.in_(ids))
    return {row_id: status for row_id, status in await session.execute(query)}


async def revive(session: AsyncSession, ids: Sequence[int]) -> None:
    """Dead rows get a fresh set of attempts, due now (a running worker is woken on PostgreSQL)."""
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(list(ids)), OutboxMessage.status == DEAD)
        .values(status=PENDING, attempts=0, available_at=utcnow(), claimed_by=None, claimed_until=None)
    )
    if ids:
        await notify_outbox(session)


async def discard(session: AsyncSession, ids: Sequence[int]) -> list[OutboxMessage]:
    """Dead rows (of these ids) set aside for good; returns them as they were."""
    rows = list(
        (
            await session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.id.in_(list(ids)), OutboxMessage.status == DEAD)
                .order_by(OutboxMessage.id)
                .with_for_update()
            )
        ).all()
    )
    if rows:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_([row.id for row in rows]), OutboxMessage.status == DEAD)
            .values(status=DISCARDED, claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )
    return rows


@dataclass(frozen=True)
class Stats:
    """How the outbox stands: rows waiting (due or not), rows buried, and when the oldest due one fell due."""

    pending: int
    dead: int
    oldest_due: datetime | None


async def stats(session: AsyncSession, now: datetime | None = None) -> Stats:
    """One aggregate read for the /metrics gauges."""
    now = now or utcnow()
    pending = OutboxMessage.status == PENDING
    row = (
        await session.execute(
            select(
                func.count().filter(pending),
                func.count().filter(OutboxMessage.status == DEAD),
                func.min(OutboxMessage.available_at).filter(and_(pending, OutboxMessage.available_at <= now)),
            )
        )
    ).one()
    return Stats(pending=row[0] or 0, dead=row[1] or 0, oldest_due=row[2])
