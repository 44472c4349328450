"""The outbox worker's outcomes, written together: the outcomes of deliveries that end in one turn of the
event loop share one transaction, each in a SAVEPOINT of its own, so one whose recorder fails rolls back
alone. What a recorder asks for once its outcome is committed runs after the commit, in its delivery's
context (the log's fields); on PostgreSQL the audit events the outcomes wrote (an apply's result) are
sealed after that, and a seal that fails then is logged, not taken for a failed batch.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import Context, copy_context
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.outbox import AfterCommit, Recorder
from storage import outbox as table
from storage.db import Database, savepoint, unsealed
from storage.models import OutboxMessage

log = logging.getLogger("dpor.worker")


@dataclass
class _Outcome:
    row: OutboxMessage
    status: str
    record: Recorder | None
    values: dict[str, Any]
    settled: asyncio.Future[table.Settled]
    context: Context  # its delivery's (the log's fields): where `after` runs
    after: AfterCommit | None = None  # what its recorder asks for once the outcome is committed


class Outcomes:
    """`write()` records a row's outcome for `owner` (the worker holding it) with what its deliverer asks
    to record; it returns whether the row was still this worker's and whether rows of its key wait
    (`storage.outbox.Settled`), and raises what failed."""

    def __init__(self, db: Database, owner: str) -> None:
        self.db = db
        self.owner = owner
        self._waiting: list[_Outcome] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(
        self, row: OutboxMessage, status: str, record: Recorder | None, **values: Any
    ) -> table.Settled:
        done: asyncio.Future[table.Settled] = asyncio.get_running_loop().create_future()
        outcome = _Outcome(row, status, record, values, done, copy_context())
        self._waiting.append(outcome)
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name="dpor-outbox-outcomes")
        return await asyncio.shield(done)

    async def _run(self) -> None:
        """Write the outcomes waiting, a batch per transaction, until none waits."""
        batch: list[_Outcome] = []
        try:
            await asyncio.sleep(0)  # outcomes ending in this turn of the event loop join the first batch
            while self._waiting:
                batch, self._waiting = self._waiting, []
                sealing: list[int] = []
                try:
                    async with self.db.write(serial=False, seal=False) as session:
                        results = [await self._write_one(session, outcome) for outcome in batch]
                    sealing = unsealed(session)
                except Exception as exc:  # the transaction failed: none of the batch was written
                    results = [exc] * len(batch)
                for outcome, result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        outcome.settled.set_exception(result)
                        continue
                    if outcome.after is not None:
                        try:
                            outcome.context.run(outcome.after)
                        except Exception:
                            log.exception("outbox row %s: after its outcome was recorded", outcome.row.id)
                    outcome.settled.set_result(result)
                batch = []
                if sealing:
                    await self._seal(sealing)
        except BaseException as exc:  # cancelled (the loop is closing): nobody waits forever
            for outcome in [*batch, *self._waiting]:
                if not outcome.settled.done():
                    outcome.settled.set_exception(exc)
            self._waiting = []
            raise
        finally:
            self._writer = None

    async def _write_one(self, session: AsyncSession, outcome: _Outcome) -> table.Settled | Exception:
        try:
            async with savepoint(session):
                after = await outcome.record(session) if outcome.record is not None else None
                row, status = outcome.row, outcome.status
                # With the row's key: whether rows of it wait (the worker claims again only if so).
                settled = await table.settle(
                    session, row.id, self.owner, status, key=row.key, **outcome.values
                )
        except Exception as exc:
            return exc
        outcome.after = after  # run once the whole batch has committed, never for a rolled back one
        return settled

    async def _seal(self, ids: list[int]) -> None:
        """PostgreSQL: chain the audit events the outcomes wrote; nobody waits for them, and any later
        seal of any process chains them if this one fails."""
        try:
            await self.db.seal(ids)
        except Exception:
            log.warning(
                "audit events %s are committed but not chained yet; the next seal chains them",
                ids,
                exc_info=True,
            )
