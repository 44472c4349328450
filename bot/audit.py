"""The tamper-evident audit log: an append-only hash chain, its verification and its export."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from storage.db import Database
from storage.models import AuditEvent, utcnow

GENESIS = "0" * 64
ACTIONS = frozenset(
    {
        "subscription.added",
        "partner.added",
        "role.granted",
        "role.revoked",
        "request.created",
        "request.approved",
        "request.rejected",
        "request.cancelled",
        "request.expired",
        "approval.denied",
        "apply.started",
        "apply.succeeded",
        "apply.failed",
        "partner.drift",
    }
)
EXPORT_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "request_id",
    "subscription_id",
    "data",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True)
class Entry:
    actor: str
    action: str
    request_id: int | None = None
    subscription_id: str | None = None
    data: dict[str, Any] | None = None


def _iso(at: datetime) -> str:
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
    body = {
        "seq": seq,
        "at": _iso(at),
        "actor": actor,
        "action": action,
        "request_id": request_id,
        "subscription_id": subscription_id,
        "data": data,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


async def append_many(session: AsyncSession, entries: Iterable[Entry]) -> int:
    """Append events after the chain's tip. Call inside `Database.write()` (it holds the chain lock)."""
    tip = (
        await session.execute(
            select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
        )
    ).first()
    seq, prev = (tip.seq, tip.hash) if tip else (0, GENESIS)
    rows = []
    at = utcnow()
    for entry in entries:
        if entry.action not in ACTIONS:
            raise ValueError(f"unknown audit action {entry.action!r}")
        seq += 1
        data = entry.data or {}
        digest = chain_hash(
            prev,
            canonical(seq, at, entry.actor, entry.action, entry.request_id, entry.subscription_id, data),
        )
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": entry.actor,
                "action": entry.action,
                "request_id": entry.request_id,
                "subscription_id": entry.subscription_id,
                "data": data,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
    if rows:
        await session.execute(insert(AuditEvent), rows)
    return len(rows)


async def append(session: AsyncSession, entry: Entry) -> None:
    await append_many(session, [entry])


@dataclass(frozen=True)
class Verification:
    events: int
    broken_seq: int | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


async def _events(db: Database, batch: int = 5000) -> AsyncIterator[AuditEvent]:
    after = 0
    while True:
        async with db.read() as session:
            rows = (
                await session.scalars(
                    select(AuditEvent).where(AuditEvent.seq > after).order_by(AuditEvent.seq).limit(batch)
                )
            ).all()
        if not rows:
            return
        for row in rows:
            yield row
        after = rows[-1].seq


async def verify(db: Database) -> Verification:
    """Recompute the chain from the first event; name the first event that does not fit."""
    prev, expected_seq, count = GENESIS, 1, 0
    async for event in _events(db):
        count += 1
        if event.seq != expected_seq:
            return Verification(
                count,
                event.seq,
                f"expected event {expected_seq} here, found {event.seq} (an event is missing)",
            )
        if event.prev_hash != prev:
            return Verification(
                count,
                event.seq,
                "prev_hash does not match the previous event's hash (an event was removed or reordered)",
            )
        body = canonical(
            event.seq,
            event.at,
            event.actor,
            event.action,
            event.request_id,
            event.subscription_id,
            event.data or {},
        )
        if chain_hash(prev, body) != event.hash:
            return Verification(
                count, event.seq, "its hash does not match its content (the event was edited)"
            )
        prev, expected_seq = event.hash, expected_seq + 1
    return Verification(count)


def _export_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": _iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "request_id": event.request_id,
        "subscription_id": event.subscription_id,
        "data": event.data or {},
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


async def export(db: Database, out: TextIO, fmt: str = "jsonl") -> int:
    count = 0
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
    async for event in _events(db):
        row = _export_row(event)
        if writer is not None:
            row["data"] = json.dumps(row["data"], sort_keys=True, separators=(",", ":"))
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
        else:
            out.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
        count += 1
    return count
