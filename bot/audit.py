"""The tamper-evident audit log: the actions it records, appending to the keyed chain, verification (against
the key and against published checkpoints) and export."""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import BadInput
from bot.settings import ConfigError
from storage import audit as chain
from storage.audit import GENESIS, canonical, chain_hash, key_id
from storage.db import Database, audit_key_of
from storage.models import AuditEvent, is_postgresql

__all__ = [
    "ACTIONS",
    "EXPORT_FIELDS",
    "GENESIS",
    "Checkpoint",
    "Entry",
    "append",
    "append_many",
    "canonical",
    "chain_hash",
    "key_id",
]

ACTIONS = frozenset(
    {
        "subscription.added",
        "partner.added",
        "partner.principal_added",
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
        "audit.rekeyed",
        "audit.accepted",
        "outbox.discarded",
        "person.linked",
        "person.unlinked",
    }
)
NO_KEY = (
    "the audit key is not loaded: set DPOR_AUDIT_KEY to the key the audit log is written with "
    "(README: Audit log)"
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
    key = audit_key_of(session)
    if key is None:
        raise ConfigError(NO_KEY)  # never an event the key does not vouch for
    return await chain.append(session, entries, key)


async def append(session: AsyncSession, entry: Entry) -> None:
    await append_many(session, [entry])


async def seal(session: AsyncSession, key: bytes | None = None) -> int:
    """Chain the events waiting for the sealer (PostgreSQL) in this transaction, under the chain lock;
    `key`: the chain's key when the session does not carry it (re-keying)."""
    if not is_postgresql(session):
        return 0  # SQLite chains events as they are appended
    key = key or audit_key_of(session)
    if key is None:
        raise ConfigError(NO_KEY)
    return await chain.seal(session, key)


@dataclass(frozen=True)
class Checkpoint:
    """A head of the chain as published outside the database: event `seq` had hash `hash` at time `at`."""

    seq: int
    hash: str
    at: str

    def __str__(self) -> str:
        return f"seq={self.seq} hash={self.hash} at={self.at}"


@dataclass(frozen=True)
class Verification:
    events: int
    broken_seq: int | None = None
    problem: str | None = None
    checkpoints: int = 0
    # The first published checkpoint (lowest position) the database no longer extends, and why.
    contradicted: Checkpoint | None = None
    contradiction: str | None = None
    # PostgreSQL: rows of audit_pending the bot did not write as they are (no valid signature), which the
    # sealer leaves out of the chain: someone inserted or edited them in the database.
    forged: tuple[int, ...] = ()

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and self.contradicted is None and not self.forged


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


def check(event: Any, prev: str, expected_seq: int, keys: Mapping[str | None, bytes | None]) -> str | None:
    """What is wrong with `event` as the one at `expected_seq` after hash `prev`, or None.

    `keys` maps the key ids accepted to their keys (None: the plain SHA-256 of events written before the
    chain was keyed, accepted only while re-keying).
    """
    if event.seq != expected_seq:
        return f"expected event {expected_seq} here, found {event.seq} (an event is missing)"
    if event.prev_hash != prev:
        return "prev_hash does not match the previous event's hash (an event was removed or reordered)"
    if event.key_id not in keys:
        if event.key_id is None:
            return (
                "it is not keyed (plain SHA-256): written before the chain was keyed, "
                "or rewritten without the key"
            )
        given = ", ".join(k for k in keys if k) or "none"
        return f"it is keyed with key id {event.key_id}, not with the key given (key id {given})"
    if chain.event_hash(event, prev, keys[event.key_id]) != event.hash:
        return "its hash does not match its content (the event was edited)"
    return None


async def verify(
    db: Database, key: bytes | None = None, checkpoints: Sequence[Checkpoint] = ()
) -> Verification:
    """Recompute the chain from the first event with the key (default: the database's); name the first event
    that does not fit, and the first of `checkpoints` whose event is gone or has another hash now."""
    key = key if key is not None else db.audit_key
    if key is None:
        raise ConfigError(f"`audit verify` needs the audit key: {NO_KEY.split(': ', 1)[1]}")
    await db.seal()  # PostgreSQL: what was committed and is still waiting for the sealer is chained first
    async with db.read() as session:
        forged = await chain.not_ours(session, key)  # what the sealer refused: still waiting
        outside, lowest = await chain.outside_chain(session)
    keys: dict[str | None, bytes | None] = {key_id(key): key}
    published = sorted(checkpoints, key=lambda c: c.seq)
    prev, expected_seq, count, at, last = GENESIS, 1, 0, 0, 0
    broken: tuple[int, str] | None = None
    contradicted: tuple[Checkpoint, str] | None = None
    async for event in _events(db):
        count += 1
        if broken is None:
            problem = check(event, prev, expected_seq, keys)
            if problem is not None:
                broken = (event.seq, problem)
        while contradicted is None and at < len(published) and published[at].seq <= event.seq:
            point = published[at]
            if point.seq < event.seq:
                contradicted = (point, f"the log has no event {point.seq} (history was rewritten)")
            elif point.hash != event.hash:
                why = f"event {point.seq} now has hash {event.hash}, not the published one"
                contradicted = (point, f"{why} (history was rewritten)")
            at += 1
        if broken is not None and (contradicted is not None or at == len(published)):
            break
        prev, expected_seq, last = event.hash, event.seq + 1, event.seq
    if contradicted is None and at < len(published):
        end = f"ends at event {last}" if last else "is empty"
        contradicted = (published[at], f"the log {end} (history was truncated)")
    if broken is None and outside:
        # The walk starts at event 1: rows below it are never its, yet the table shows them as events.
        broken = (
            lowest,
            f"{outside} event{'s' if outside != 1 else ''} below position 1, outside the chain "
            "(written into the table by hand)",
        )
    return Verification(
        count,
        broken[0] if broken else None,
        broken[1] if broken else None,
        len(published),
        contradicted[0] if contradicted else None,
        contradicted[1] if contradicted else None,
        tuple(forged),
    )


async def accept(db: Database, ids: Sequence[int], actor: str) -> list[int]:
    """PostgreSQL: have the sealer chain waiting events it refused (`Verification.forged`), once an
    operator has checked them: an event a version before migration 0009 left unchained, say. They are
    signed as they are now and chained, followed by `audit.accepted` naming them. Returns the ids that
    were waiting (the others are not accepted)."""
    if db.is_sqlite:
        raise BadInput(
            "SQLite chains each event as it is written: no row of audit_pending is the bot's. "
            "Look at them, then delete them"
        )
    async with db.write() as session:  # its commit is followed by a seal: the rows are chained then
        key = audit_key_of(session)
        if key is None:
            raise ConfigError(NO_KEY)
        found = await chain.sign_pending(session, ids, key)
        if found:
            await append(session, Entry(actor=actor, action="audit.accepted", data={"pending_ids": found}))
    return found


def forged_text(ids: Sequence[int]) -> str:
    """What `verify`'s `forged` means, for a person."""
    return (
        f"audit_pending holds {len(ids)} row{'s' if len(ids) != 1 else ''} the bot did not write "
        f"(id {', '.join(map(str, ids[:10]))}{', ...' if len(ids) > 10 else ''}: their signature does not "
        "check, so someone inserted or edited them in the database, or a version before migration 0009 "
        "left them); they are not in the chain. Inspect them, then delete them, or chain those that are "
        "genuine with `dpor-bot audit accept ID`"
    )


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
