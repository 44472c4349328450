"""Witnessed checkpoints: the audit chain's head (position, hash, time) published outside the database.

A checkpoint is taken after each applied change, after the chain is re-keyed, and at least daily (the
worker's sweep). It is kept in `audit_checkpoints`, written to the log (`dpor.audit`: `audit checkpoint
seq=N hash=H at=T`) once its transaction commits, and posted in DPOR_AUDIT_CHANNEL through the outbox.
Whoever keeps those copies can later prove, with `dpor-bot audit verify --checkpoints FILE`, that the
database still extends every head it published: even someone with the key cannot rewrite or truncate
history behind a published head unnoticed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.audit import Checkpoint
from bot.errors import BadInput
from bot.outbox import Outbox
from storage import audit as chain
from storage import checkpoints as table
from storage.db import Database
from storage.models import utcnow

log = logging.getLogger("dpor.audit")

EVERY = timedelta(days=1)  # a checkpoint at least this often, while the bot runs
APPLY, DAILY, REKEY, CLI = "apply", "daily", "rekey", "cli"  # what took a checkpoint (kept in the table)
# A checkpoint as the log line and the channel's message write it: `--checkpoints` reads it from either.
_WRITTEN = re.compile(r"\bseq=(\d+)\s+hash=([0-9a-f]{64})\s+at=([0-9T:.+\-Z]+)")


async def take(
    session: AsyncSession, channel: str | None, reason: str, key: bytes | None = None
) -> Checkpoint | None:
    """Record the chain's head now and queue its message for `channel`, in the caller's transaction;
    None when the log is empty. Hand the result to `published` once the transaction has committed."""
    await audit.seal(session, key)  # PostgreSQL: events still waiting for the sealer are chained first
    head = await chain.tip(session)
    if head is None:
        return None
    at = utcnow()
    await table.record(session, head.seq, head.hash, at, reason)
    point = Checkpoint(head.seq, head.hash, chain.iso(at))
    if channel:
        rows = Outbox()
        rows.checkpoint(channel, point.seq, point.hash, point.at)
        await rows.flush(session)
    return point


def published(point: Checkpoint | None) -> None:
    """The log's copy of a committed checkpoint (never before its commit: a rolled back head is no head)."""
    if point is not None:
        log.info("audit checkpoint %s", point)


async def daily(
    db: Database, channel: str | None, *, every: timedelta = EVERY, now: datetime | None = None
) -> Checkpoint | None:
    """A checkpoint when the newest is `every` old (or there is none); every process may call it at once."""
    now = now or utcnow()
    async with db.read() as session:
        newest = await table.latest(session)
    if newest is not None and newest.at > now - every:
        return None
    async with db.write() as session:  # the chain lock: one process takes it, the others see it taken
        newest = await table.latest(session)
        if newest is not None and newest.at > now - every:
            return None
        point = await take(session, channel, DAILY)
    published(point)
    return point


def with_daily(
    sweep: Callable[[], Awaitable[None]], db: Database, channel: str | None
) -> Callable[[], Awaitable[None]]:
    """The outbox worker's sweep (expiry and reminders: lifecycle.sweep), then the daily checkpoint."""

    async def run() -> None:
        await sweep()
        await daily(db, channel)

    return run


async def export(db: Database, out: TextIO, batch: int = 1000) -> int:
    """Every checkpoint taken, oldest first, as JSONL: seq, hash, at."""
    count, after = 0, 0
    while True:
        async with db.read() as session:
            rows = await table.after(session, after, batch)
        if not rows:
            return count
        for row in rows:
            out.write(json.dumps({"seq": row.seq, "hash": row.hash, "at": chain.iso(row.at)}) + "\n")
        count += len(rows)
        after = rows[-1].id


def read(lines: Iterable[str], name: str) -> list[Checkpoint]:
    """Checkpoints from a file: JSON lines as exported, or any lines holding `seq=N hash=H at=T` (the log's
    lines, the channel's messages pasted or exported); other lines are skipped."""
    found: list[Checkpoint] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text.startswith("{") and _exported(text):
            try:
                row = json.loads(text)
                point = Checkpoint(int(row["seq"]), str(row["hash"]).lower(), str(row.get("at", "")))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise BadInput(
                    f"{name}, line {number}: not a checkpoint (expected seq, hash and at)"
                ) from None
            if point.seq < 1 or not re.fullmatch(r"[0-9a-f]{64}", point.hash):
                raise BadInput(f"{name}, line {number}: not a checkpoint (seq from 1, hash of 64 hex digits)")
            found.append(point)
            continue
        found += [Checkpoint(int(s), h, at) for s, h, at in _WRITTEN.findall(text) if int(s) >= 1]
    if not found:
        raise BadInput(f"{name} holds no checkpoints (JSON lines of seq, hash, at, or `seq=N hash=H at=T`)")
    return found


def _exported(text: str) -> bool:
    """Whether a line that opens a JSON object is an exported checkpoint, read strictly (one cut or edited
    is refused, never skipped). Other JSON, such as the log's lines with DPOR_LOG_FORMAT=json (the
    checkpoint in their `message`) or a Slack export's pretty-printed `{`, is searched for
    `seq=N hash=H at=T` as any other line is."""
    try:
        row = json.loads(text)
    except ValueError:  # an exported line cut short, even before its "seq" (a lone `{` opens an object)
        return '"seq"' in text or (text != "{" and '{"seq"'.startswith(text))
    return not isinstance(row, dict) or "seq" in row or "hash" in row
