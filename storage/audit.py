"""The audit chain's storage: appending events after the tip, hashing them, and reading them back in order."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import AuditEvent, utcnow

GENESIS = "0" * 64


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


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def event_hash(event: AuditEvent, prev_hash: str) -> str:
    """Recompute a stored event's hash from its content and its predecessor's hash."""
    body = canonical(
        event.seq,
        event.at,
        event.actor,
        event.action,
        event.request_id,
        event.subscription_id,
        event.data or {},
    )
    return chain_hash(prev_hash, body)


async def append(session: AsyncSession, events: Sequence[NewEvent]) -> int:
    """Chain events after the tip. Call inside `Database.write()`, which serialises chain appends."""
    tip = (
        await session.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        )
    ).first()
    seq, prev = (tip.seq, tip.hash) if tip else (0, GENESIS)
    rows = []
    at = utcnow()
    for event in events:
        seq += 1
        data = event.data or {}
        body = canonical(seq, at, event.actor, event.action, event.request_id, event.subscription_id, data)
        digest = chain_hash(prev, body)
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": event.actor,
                "action": event.action,
                "request_id": event.request_id,
                "subscription_id": event.subscription_id,
                "data": data,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if rows:
        await session.execute(insert(AuditEvent), rows)
    return len(rows)


async def events_after(session: AsyncSession, seq: int, limit: int) -> list[AuditEvent]:
    """The next `limit` events after position `seq`, in chain order."""
    return list(
        (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.seq > seq).order_by(AuditEvent.seq).limit(limit)
            )
        ).all()
    )


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
