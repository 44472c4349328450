"""Signed requests already let through: an INSERT tells a first sighting from a replay, on every process."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.db import Database
from storage.models import SeenRequest, utcnow

# Slack's window: a request is accepted while its signed timestamp is within five minutes of now,
# either way. A minute more covers clocks that differ between the bot's processes.
KEEP = timedelta(minutes=6)
PRUNE_EVERY = 60.0  # seconds, per process
BATCH = 500

_seen = SeenRequest.__table__
_INSERT_SQLITE = sqlite_insert(_seen).on_conflict_do_nothing().returning(_seen.c.digest)
_INSERT_PG = pg_insert(_seen).on_conflict_do_nothing().returning(_seen.c.digest)
_pruned_at = float("-inf")


class Sightings:
    """Records signature digests. Those that arrive while a transaction is being written go together in
    the next one: one commit for many requests (a commit costs SQLite milliseconds)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: list[tuple[str, datetime, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def first(self, digest: str, signed_at: datetime) -> bool:
        """Record a digest; False when it was recorded before (a replay). Raises when the write fails."""
        seen: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((digest, signed_at, seen))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="dpor-seen-requests")
        return await seen

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
            try:
                new = await _insert_new(self.db, batch)
            except Exception as exc:
                for *_, seen in batch:
                    if not seen.done():
                        seen.set_exception(exc)
                continue
            for digest, _, seen in batch:
                if not seen.done():
                    seen.set_result(digest in new)
                new.discard(digest)  # the same digest twice in one batch: the second is the replay


async def _insert_new(db: Database, rows: list[tuple[str, datetime, object]]) -> set[str]:
    """Insert the digests in one transaction; returns those that were not there yet. Now and then the same
    transaction forgets the digests no window can accept any more."""
    global _pruned_at
    values = [{"digest": digest, "signed_at": signed_at} for digest, signed_at, _ in rows]
    # Not durable: whether a signature is new is decided by the INSERT, under the write lock, whatever the
    # disk; a power cut could forget the newest sightings only until a durable commit (a request's own
    # write, which comes after its sighting) covers them.
    async with db.write(serial=False, durable=False) as session:
        # One statement compiled once per engine, its rows sent as a batch ("insertmanyvalues").
        new = set((await session.execute(_INSERT_SQLITE if db.is_sqlite else _INSERT_PG, values)).scalars())
        if time.monotonic() - _pruned_at >= PRUNE_EVERY:
            _pruned_at = time.monotonic()
            await session.execute(delete(_seen).where(_seen.c.signed_at < utcnow() - KEEP))
    return new
