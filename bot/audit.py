"""The tamper-evident audit log: the actions it records, appending to the chain, verification and export."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncSession

from storage import audit as chain
from storage.audit import GENESIS, canonical, chain_hash
from storage.db import Database
from storage.models import AuditEvent

__all__ = ["ACTIONS", "EXPORT_FIELDS", "GENESIS", "Entry", "append", "append_many", "canonical", "chain_hash"]

ACTIONS = frozenset(
    {
        "subscription.added",
        "partner.added",
        "subscription.removed",
        "partner.removed",
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
        "channel.subscribed",
        "channel.unsubscribed",
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

Entry = chain.NewEvent


async def append_many(session: AsyncSession, entries: Iterable[Entry]) -> int:
    """Append events after the chain's tip. Call inside `Database.write()` (it holds the chain lock)."""
    entries = list(entries)
    for entry in entries:
        if entry.action not in ACTIONS:
            raise ValueError(f"unknown audit action {entry.action!r}")
    return await chain.append(session, entries)


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
            rows = await chain.events_after(session, after, batch)
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
        if chain.event_hash(event, prev) != event.hash:
            return Verification(
                count, event.seq, "its hash does not match its content (the event was edited)"
            )
        prev, expected_seq = event.hash, expected_seq + 1
    return Verification(count)


def _export_row(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": chain.iso(event.at),
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
