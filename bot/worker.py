"""The outbox worker: claims due rows under a lease, hands each to its deliverer, retries, buries, drains.

Delivery is at least once, and once in all but one window. A row is claimed in one committed transaction
(with a lease that the worker renews while it holds the row) and its outcome is recorded in another, after
the deliverer returned. A process that dies in between leaves the row claimed until the lease lapses; then
any process delivers it again. If it died after Slack accepted a message but before the outcome was
committed, that message is sent twice: Slack's Web API has no idempotency key to prevent it. Card updates
(in place) and applies (read, then create or update) are safe to repeat.

The worker knows no Slack and no provider: the app assembly hands it one deliverer per kind of row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from bot.logs import bound
from bot.outbox import Recorder, Undeliverable
from bot.outcomes import Outcomes
from storage import notify
from storage import outbox as table
from storage.db import Database
from storage.models import OutboxMessage, utcnow

log = logging.getLogger("dpor.worker")
T = TypeVar("T")

# The claim a delivery came from: a number per claim, rising, in this process. Rows claimed together were
# all committed before their claim, so whatever a deliverer reads after it is at least as new as every one
# of them: the rows of one claim may share a read (handlers.deliver shares a request's card view).
CLAIM: ContextVar[int | None] = ContextVar("dpor_outbox_claim", default=None)

Deliver = Callable[[OutboxMessage], Awaitable[Recorder | None]]
DeadRecorder = Callable[[OutboxMessage, str], Recorder | None]  # None: nothing to record
"""What a dead row of a kind records (a dead apply fails its request), given the row and its last error:
written in the transaction that marks the row dead."""


# How many more claims a row gets, after its last attempt, for what its death records (a dead recorder,
# written with the row's death) before it is buried without it.
DEAD_RECORDER_TRIES = 3


def backoff(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: attempt 1 waits 1-2 s, attempt 8 between 128 and 256 s."""
    return random.uniform(0.5, 1.0) * min(cap, base**attempt)


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        deliverers: Mapping[str, Deliver],
        *,
        dead_recorders: Mapping[str, DeadRecorder] | None = None,
        sweep: Callable[[], Awaitable[None]] | None = None,
        name: str | None = None,
        poll_interval: float = 1.0,
        sweep_interval: float = 30.0,
        lease: timedelta = timedelta(seconds=30),
        max_attempts: int = 8,
        concurrency: int = 20,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.db = db
        self.deliverers = deliverers
        self.dead_recorders = dead_recorders or {}
        self.sweep = sweep
        # Unique per process start, so a restarted process never passes for the one that died.
        self.name = name or f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.lease = lease
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.shutdown_grace = shutdown_grace
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Rows this process holds (claimed, not yet recorded), and outcome writes under way.
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._recording: set[asyncio.Task[None]] = set()
        self._claims = 0
        self._outcomes = Outcomes(db, self.name)  # written together (`_settle`)
        # Wakes so far (commits that wrote rows, notifications, deliveries' own commits), and whether the
        # last claim took as many rows as it had slots: with both, a delivery's end tells whether a claim
        # could find anything new (`_handle`).
        self._wakes = 0
        self._full = False

    def wake(self) -> None:
        """Deliver now rather than at the next poll (called after a commit that wrote rows). Not for the
        commits of a delivery itself: its end wakes the worker, so the rows it queued go in one claim (an
        apply's "applying" card is covered by its "applied" one instead of holding it up)."""
        self._wakes += 1
        if CLAIM.get() is None:
            self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="dpor-outbox-worker")

    async def stop(self) -> None:
        """Claim nothing more; give rows in hand `shutdown_grace` seconds, then cancel and release them."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_grace)
        except TimeoutError:
            log.warning(
                "%d outbox rows still in hand after %gs; releasing them for another attempt",
                len(self._inflight),
                self.shutdown_grace,
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(), name="dpor-outbox-lease")
        try:
            # A commit that wrote rows wakes this worker: in this process at once, in any other one on
            # PostgreSQL (LISTEN dpor_outbox).
            async with notify.listen(self.db, self.wake):
                await self._claim_loop()
            if self._inflight:
                await asyncio.wait(list(self._inflight.values()))
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._abandon()

    async def _claim_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while not self._stopping:
            self._wake.clear()
            claimed = free = 0
            if self.sweep is not None and loop.time() >= next_sweep:
                next_sweep = loop.time() + self.sweep_interval
                try:
                    await self.sweep()
                except Exception:
                    log.exception("outbox sweep (expiry, reminders) failed; trying again at the next one")
            try:
                free = self.concurrency - len(self._inflight)
                if free > 0:
                    wakes = self._wakes  # rows written after this may be held up by those claimed now
                    rows = await self._claim(free)
                    self._claims += 1
                    self._full = len(rows) >= free
                    for row in rows:
                        self._inflight[row.id] = asyncio.create_task(
                            self._handle(row, self._claims, wakes), name=f"dpor-outbox-{row.id}"
                        )
                        claimed += 1
            except Exception:
                log.exception("outbox worker cycle failed; trying again shortly")
            # Claim again at once only after a claim that filled every free slot. One that found fewer
            # rows found them all, and with no slot free there is nothing to do: wait for a wake (a commit
            # that wrote rows, a delivery that ended and may unblock the next row of its key) or the poll.
            if not (0 < free <= claimed) and not self._stopping:
                wait = (
                    self.poll_interval
                    if self.sweep is None
                    else min(self.poll_interval, next_sweep - loop.time())
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, wait))

    async def _claim(self, limit: int) -> list[OutboxMessage]:
        # Not durable: a claim lost to a power cut only lets the rows be claimed again (they are delivered
        # at least once), and it is on the disk with the next durable commit anyway.
        async with self.db.write(serial=False, durable=False) as session:
            rows = await table.claim(
                session,
                self.name,
                self.lease,
                limit,
                skip_locked=not self.db.is_sqlite,
                held=list(self._inflight),  # a row whose lease lapsed in our hands is not taken twice
            )
        for row in rows:
            if row.claimed_until is not None:
                log.warning(
                    "outbox row %s (%s): %s stopped without recording an outcome (its lease lapsed); "
                    "delivering it again",
                    row.id,
                    row.kind,
                    row.claimed_by,
                )
            row.attempts += 1
        return rows

    async def _heartbeat(self) -> None:
        """Renew the lease of the rows in hand, so no other process takes them while they are delivered."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            ids = list(self._inflight)
            if not ids:
                continue
            try:
                async with self.db.write(serial=False, durable=False) as session:
                    await table.renew(session, ids, self.name, self.lease)
            except Exception:
                log.warning("could not renew the lease of outbox rows %s", ids, exc_info=True)

    async def _handle(self, row: OutboxMessage, claim: int, wakes: int) -> None:
        cancelled = quiet = False
        CLAIM.set(claim)  # this task's own context: its deliverer sees which claim the row came from
        notify.DELIVERING.set(True)  # the rows its commits write wait for its end (storage.notify)
        try:
            with bound(request_id=(row.payload or {}).get("request_id")):  # the log's field, where known
                quiet = await self._deliver_and_record(row)
        except asyncio.CancelledError:
            cancelled = True  # shutting down: _abandon releases the row once outcomes under way are written
            raise
        except Exception:
            log.exception(
                "outbox row %s (%s): its outcome could not be recorded; it is delivered again when its "
                "lease lapses",
                row.id,
                row.kind,
            )
        finally:
            if not cancelled:
                self._inflight.pop(row.id, None)
            # Claim again unless nothing can have become claimable: the row is done with no row of its key
            # waiting, nothing was written since its claim (a row of its key held up behind it), and that
            # claim left no row waiting for a free slot. An empty claim is a write transaction.
            if not (quiet and wakes == self._wakes and not self._full):
                self._wake.set()

    async def _deliver_and_record(self, row: OutboxMessage) -> bool:
        """Deliver the row and record its outcome; True when it is done and no row of its key waits."""
        if row.attempts > self.max_attempts:
            error = f"{row.attempts - 1} attempts, the last ended without an outcome (its process stopped)"
            await self._record(self._failed(row, Undeliverable(error, permanent=True)))
            return False
        deliver = self.deliverers.get(row.kind)
        try:
            if deliver is None:
                raise Undeliverable(f"no deliverer for outbox kind {row.kind!r}", permanent=True)
            record = await deliver(row)
        except Undeliverable as exc:
            await self._record(self._failed(row, exc))
        except Exception as exc:
            log.exception("outbox row %s (%s) failed unexpectedly", row.id, row.kind)
            await self._record(self._failed(row, Undeliverable(f"{type(exc).__name__}: {exc}")))
        else:
            try:
                settled = await self._record(self._settle(row, table.DONE, record, delivered_at=utcnow()))
                return settled.settled and not settled.followed
            except Exception as exc:
                if record is None:
                    raise  # the outcome alone could not be written: the lease brings the row back
                # What the delivery records (an apply's result, a card's place) rolled back: deliver the
                # row again after a backoff, as a failed delivery, with the reason kept on the row.
                log.exception("outbox row %s (%s): its outcome could not be recorded", row.id, row.kind)
                failure = Undeliverable(f"its outcome could not be recorded: {type(exc).__name__}: {exc}")
                await self._record(self._failed(row, failure))
        return False

    async def _record(self, write: Awaitable[T]) -> T:
        """Write an outcome to its end even if shutdown cancels the delivery waiting for it: what Slack
        accepted must not go unrecorded because we stopped."""
        task = asyncio.ensure_future(write)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        return await asyncio.shield(task)

    async def _settle(
        self, row: OutboxMessage, status: str, record: Recorder | None, **values: Any
    ) -> table.Settled:
        """Record a row's outcome (and what its deliverer asks to record with it), with the outcomes that
        end together (bot.outcomes): one whose recorder fails rolls back alone and raises here."""
        settled = await self._outcomes.write(row, status, record, **values)
        if not settled.settled:
            log.warning(
                "outbox row %s (%s) was taken over by another process while this one held it "
                "(its lease lapsed); it may have been delivered twice",
                row.id,
                row.kind,
            )
        return settled

    async def _failed(self, row: OutboxMessage, exc: Undeliverable) -> None:
        attempts = row.attempts - 1 if exc.rate_limited else row.attempts
        error = str(exc)[:2000]
        if exc.permanent or attempts >= self.max_attempts:
            log.error(
                "outbox row %s (%s, %s) is dead after %s attempts: %s. "
                "`dpor-bot outbox retry %s` queues it again",
                row.id,
                row.kind,
                row.key,
                attempts,
                error,
                row.id,
            )
            dead = self.dead_recorders.get(row.kind)
            record = dead(row, error) if dead else None
            if record is not None and row.attempts > self.max_attempts + DEAD_RECORDER_TRIES:
                # What its death records failed each time (it rolls the row's death back with it): the
                # row is buried without it rather than tried for ever.
                log.error(
                    "outbox row %s (%s): what its death records could not be written in %d tries; it is "
                    "marked dead without it (an apply row leaves its request as it is: `dpor-bot outbox "
                    "retry %s` tries the apply again)",
                    row.id,
                    row.kind,
                    DEAD_RECORDER_TRIES,
                    row.id,
                )
                record = None
            await self._settle(row, table.DEAD, record, last_error=error, attempts=attempts)
            return
        delay = exc.retry_after if exc.retry_after is not None else backoff(attempts)
        until = utcnow() + timedelta(seconds=delay)
        log.warning(
            "outbox row %s (%s) failed (attempt %s of %s), retrying in %.1fs: %s",
            row.id,
            row.kind,
            attempts,
            self.max_attempts,
            delay,
            error,
        )
        channel = exc.channel

        async def hold(session: AsyncSession) -> None:
            # Slack answered 429 for the channel: every row for it waits, in every process.
            if channel is not None:
                await table.hold_channel(session, channel, until)

        await self._settle(row, table.PENDING, hold, last_error=error, attempts=attempts, available_at=until)

    async def _abandon(self) -> None:
        """On shutdown: cancel deliveries in hand, let outcomes under way be written, release the rest."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        ids = sorted(self._inflight)
        self._inflight.clear()
        if not ids:
            return
        try:
            # Bounded: with the database gone, shutdown must not wait for it; the leases lapse anyway.
            async with asyncio.timeout(2.0), self.db.write(serial=False) as session:
                await table.release(session, ids, self.name)
            log.info("released outbox rows %s: another process (or the next start) delivers them", ids)
        except Exception:
            log.warning(
                "could not release outbox rows %s; they wait for their lease to lapse", ids, exc_info=True
            )
