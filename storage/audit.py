"""The audit chain's storage: appending events after the tip, hashing them, and reading them back in order.

An event's hash is HMAC-SHA256, keyed with a secret the database does not hold, over the previous
event's hash and the event's canonical form; its `key_id` names the key. Events written before the
chain was keyed (migration 0003) carry no key id and a plain SHA-256, until they are re-keyed.

On PostgreSQL an event waits in audit_pending until the sealer chains it; the writer signs each such row
with the key (`pending_mac`), and the sealer chains only rows whose signature checks: a row someone
inserted or edited there is left out of the chain, logged, and named by `audit verify`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import weakref
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from storage import direct
from storage.models import AuditEvent, AuditPending, is_postgresql, utcnow

log = logging.getLogger("dpor.audit")

GENESIS = "0" * 64
# The PostgreSQL advisory lock the chain's tip is read and extended under: held by the sealer (and by a
# transaction that seals its own events, e.g. to checkpoint them), never by a request's transaction.
CHAIN_LOCK_KEY = 0x44504F52  # "DPOR"
# Where a session notes that it wrote events for the sealer (storage.db seals them after its commit).
UNSEALED = "dpor_unsealed"


@dataclass(frozen=True)
class NewEvent:
    """An event to append; `seq`, `at` and the hashes are assigned when it is chained."""

    actor: str
    action: str
    request_id: int | None = None
    subscription_id: str | None = None
    data: dict[str, Any] | None = None


def iso(at: datetime) -> str:
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat(timespec="microseconds")


def canonical(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    request_id: int | None,
    subscription_id: str | None,
    data: dict[str, Any],
) -> str:
    """The exact text an event's hash covers: sorted keys, no spaces, UTF-8."""
    body = {
        "seq": seq,
        "at": iso(at),
        "actor": actor,
        "action": action,
        "request_id": request_id,
        "subscription_id": subscription_id,
        "data": data,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str, key: bytes | None = None) -> str:
    """HMAC-SHA256 under `key` of the previous hash and the canonical body; without a key, the plain
    SHA-256 of events written before the chain was keyed."""
    message = (prev_hash + body).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=8)
def key_id(key: bytes) -> str:
    """A key's public name, stored with each event it hashes: it tells keys apart, never reveals one.
    Remembered per key: every append names its key."""
    return hmac.new(key, b"dpor-bot audit key id", hashlib.sha256).hexdigest()[:16]


def event_hash(event: AuditEvent, prev_hash: str, key: bytes | None = None) -> str:
    """Recompute a stored event's hash from its content and its predecessor's hash (`key`: its key)."""
    body = canonical(
        event.seq,
        event.at,
        event.actor,
        event.action,
        event.request_id,
        event.subscription_id,
        event.data or {},
    )
    return chain_hash(prev_hash, body, key)


# An event before it has a position: (at, actor, action, request_id, subscription_id, data).
Unplaced = tuple[datetime, str, str, int | None, str | None, dict[str, Any]]
_UNPLACED = ("at", "actor", "action", "request_id", "subscription_id", "data")


def _unplaced(row: Any) -> Unplaced:
    """A row of audit_pending (or a NewEvent with its time) as the event it stands for."""
    return (row.at, row.actor, row.action, row.request_id, row.subscription_id, row.data or {})


def pending_mac(key: bytes, event: Unplaced) -> str:
    """The writer's proof that a pending event (PostgreSQL) is the bot's, as written: HMAC-SHA256 under the
    audit key over the event's canonical form before it has a position (its own prefix: never a chain
    hash). Whoever can only write the database cannot make one for a row of their own or an edited one."""
    body = canonical(0, *event)
    return hmac.new(key, b"dpor-bot audit pending\n" + body.encode(), hashlib.sha256).hexdigest()


def _is_ours(row: Any, key: bytes) -> bool:
    """Whether a row of audit_pending carries the writer's proof, for its content as it is now."""
    return row.mac is not None and hmac.compare_digest(row.mac, pending_mac(key, _unplaced(row)))


@dataclass(frozen=True)
class Link:
    """An end of the chain: an event's position, hash and key id."""

    seq: int
    hash: str
    key_id: str | None


_EVENTS = AuditEvent.__table__.c
_ENDS = {
    newest: select(_EVENTS.seq, _EVENTS.hash, _EVENTS.key_id)
    .order_by(_EVENTS.seq.desc() if newest else _EVENTS.seq)
    .limit(1)
    for newest in (True, False)
}


async def _end(session: AsyncSession, newest: bool) -> Link | None:
    lane = direct.lane(session)
    if lane is not None:
        found = direct.rows(lane, direct.query(_ENDS[newest]), {})
        return Link(*found[0]) if found else None
    row = (await session.execute(_ENDS[newest])).first()
    return Link(row.seq, row.hash, row.key_id) if row else None


async def tip(session: AsyncSession) -> Link | None:
    """The newest event (the chain's head), or None for an empty log."""
    return await _end(session, newest=True)


async def first(session: AsyncSession) -> Link | None:
    """The oldest event: unkeyed when the chain has not been re-keyed yet (they come before keyed ones)."""
    return await _end(session, newest=False)


async def append(session: AsyncSession, events: Sequence[NewEvent], key: bytes) -> int:
    """Add events to the chain, keyed with `key`. On SQLite (one writer at a time) they are chained after
    the tip at once. On PostgreSQL they go to audit_pending, with no lock, and are chained by `seal`: the
    Database seals them right after this transaction commits (storage.db), and whoever seals next would."""
    events = list(events)
    if not events:
        return 0
    at = utcnow()
    rows = [(at, e.actor, e.action, e.request_id, e.subscription_id, e.data or {}) for e in events]
    if is_postgresql(session):
        pending = [{**dict(zip(_UNPLACED, row, strict=True)), "mac": pending_mac(key, row)} for row in rows]
        written = await session.execute(_INSERT_PENDING, pending)
        session.info.setdefault(UNSEALED, []).extend(written.scalars())
        return len(events)
    await _chain(session, rows, key)
    return len(events)


async def _chain(session: AsyncSession, events: Sequence[Unplaced], key: bytes) -> None:
    """Chain events after the tip, in order."""
    head = await tip(session)
    seq, prev = (head.seq, head.hash) if head else (0, GENESIS)
    kid = key_id(key)
    rows = []
    for at, actor, action, request_id, subscription_id, data in events:
        seq += 1
        digest = chain_hash(prev, canonical(seq, at, actor, action, request_id, subscription_id, data), key)
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "request_id": request_id,
                "subscription_id": subscription_id,
                "data": data,
                "prev_hash": prev,
                "hash": digest,
                "key_id": kid,
            }
        )
        prev = digest
    lane = direct.lane(session)
    if lane is not None:
        direct.insert(lane, AuditEvent.__table__, rows)
        return
    await session.execute(_INSERT_EVENTS, rows)


# Built once, as Core: an ORM bulk INSERT is built, and its rows grouped by the ORM, at each call.
_INSERT_EVENTS = insert(AuditEvent.__table__)
_INSERT_PENDING = insert(AuditPending.__table__).returning(AuditPending.__table__.c.id)


SEAL_BATCH = 5000


async def seal(session: AsyncSession, key: bytes) -> int:
    """PostgreSQL: chain the pending events this session sees (committed ones, and its own) after the tip,
    in the order they were written, under the chain lock until the caller commits; returns how many.
    Nothing to do on SQLite, where `append` chains at once."""
    if not is_postgresql(session):
        return 0
    await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
    return await _seal_locked(session, key)


async def try_seal(session: AsyncSession, key: bytes) -> bool:
    """`seal` if the chain lock is free now; False (nothing done) while another transaction holds it."""
    taken = await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
    if taken:
        await _seal_locked(session, key)
    return bool(taken)


async def still_pending(session: AsyncSession, ids: Collection[int]) -> bool:
    """Whether any of these pending events is not chained yet."""
    found = await session.scalar(select(_PENDING.c.id).where(_PENDING.c.id.in_(list(ids))).limit(1))
    return found is not None


_PENDING = AuditPending.__table__
_PENDING_AFTER = (
    select(_PENDING).where(_PENDING.c.id > bindparam("after")).order_by(_PENDING.c.id).limit(SEAL_BATCH)
)


async def _seal_locked(session: AsyncSession, key: bytes) -> int:
    sealed, after = 0, 0
    while True:
        rows = (await session.execute(_PENDING_AFTER, {"after": after})).all()
        if not rows:
            return sealed
        after = rows[-1].id
        ours = [r for r in rows if _is_ours(r, key)]
        if len(ours) < len(rows):
            _refused(session, {r.id for r in rows} - {r.id for r in ours})
        if ours:
            await _chain(session, [_unplaced(r) for r in ours], key)
            await session.execute(delete(_PENDING).where(_PENDING.c.id.in_([r.id for r in ours])))
            sealed += len(ours)
        session.info.pop(UNSEALED, None)


# The refused rows already logged, per engine (a process's Database): every write seals and finds them
# again; the log says it once.
_REFUSED_LOGGED: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()


def _refused(session: AsyncSession, ids: Iterable[int]) -> None:
    logged = _REFUSED_LOGGED.setdefault(session.get_bind(), set())
    new = sorted(set(ids) - logged)
    if not new:
        return
    if len(logged) < 100_000:
        logged.update(new)
    log.error(
        "audit_pending rows %s were not written by dpor-bot (their signature does not check: inserted or "
        "edited in the database): they are not chained. `dpor-bot audit verify` names them; inspect them, "
        "then delete them",
        ", ".join(map(str, new)),
    )


async def not_ours(session: AsyncSession, key: bytes) -> list[int]:
    """The ids of the rows waiting in audit_pending that the bot did not write as they are (no valid
    signature): the sealer leaves them out of the chain."""
    refused, after = [], 0
    while rows := (await session.execute(_PENDING_AFTER, {"after": after})).all():
        refused += [r.id for r in rows if not _is_ours(r, key)]
        after = rows[-1].id
    return refused


async def sign_pending(session: AsyncSession, ids: Collection[int], key: bytes) -> list[int]:
    """Sign these waiting rows as they are now, for the sealer to chain (an operator who checked them:
    `dpor-bot audit accept`); returns the ids found waiting."""
    # Locked: a row edited (or chained) between this read and the signature would be reported accepted.
    query = select(_PENDING).where(_PENDING.c.id.in_(list(ids))).order_by(_PENDING.c.id).with_for_update()
    rows = (await session.execute(query)).all()
    for r in rows:
        mac = pending_mac(key, _unplaced(r))
        await session.execute(update(_PENDING).where(_PENDING.c.id == r.id).values(mac=mac))
    return [r.id for r in rows]


async def outside_chain(session: AsyncSession) -> tuple[int, int | None]:
    """How many events have a position below 1 (never the bot's: the chain starts at 1, and `verify` walks
    it from there), and the lowest of them."""
    row = (await session.execute(select(func.count(), func.min(_EVENTS.seq)).where(_EVENTS.seq < 1))).one()
    return int(row[0] or 0), row[1]


async def events_after(session: AsyncSession, seq: int, limit: int) -> list[AuditEvent]:
    """The next `limit` events after position `seq`, in chain order."""
    return list(
        (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.seq > seq).order_by(AuditEvent.seq).limit(limit)
            )
        ).all()
    )


async def rows_after(session: AsyncSession, seq: int, limit: int) -> list[Any]:
    """The next `limit` events after position `seq` as plain rows (not kept by the session: a re-keying
    transaction walks the whole chain)."""
    table = AuditEvent.__table__
    return list(
        (
            await session.execute(select(table).where(table.c.seq > seq).order_by(table.c.seq).limit(limit))
        ).all()
    )


async def rehash(session: AsyncSession, hashes: Sequence[dict[str, Any]]) -> None:
    """Store recomputed hashes: each dict holds `seq`, `prev_hash`, `hash` and `key_id` (re-keying)."""
    if hashes:
        await session.execute(update(AuditEvent), list(hashes))


async def latest_of(session: AsyncSession, subscription_id: str, actions: Sequence[str]) -> AuditEvent | None:
    """The newest event of one of `actions` about a subscription."""
    return (
        await session.scalars(
            select(AuditEvent)
            .where(AuditEvent.subscription_id == subscription_id, AuditEvent.action.in_(actions))
            .order_by(AuditEvent.seq.desc())
            .limit(1)
        )
    ).first()
