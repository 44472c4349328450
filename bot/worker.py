"""The outbox worker: claims due rows, delivers them (Slack calls, provider applies), retries with backoff.

Delivery is at least once, and once in all but one window. A row is claimed in one committed transaction
(with a lease that the worker renews while it holds the row) and its outcome is recorded in another, after
Slack answered. A process that dies in between leaves the row claimed until the lease lapses; then any
process delivers it again. If it died after Slack accepted a message but before the outcome was committed,
that message is sent twice: Slack's Web API has no idempotency key to prevent it. Card updates (in place)
and applies (read, then create or update) are safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from bot import lifecycle, outbox
from bot.errors import Refusal
from bot.messages import (
    CardView,
    card_blocks,
    card_text,
    event_text,
    notification_blocks,
    reminder_text,
    safe,
    to_dicts,
)
from bot.policy import Policy
from bot.providers import ProviderError, Providers
from storage.db import Database
from storage.models import Approval, ChangeRequest, OutboxMessage, Subscription, utcnow
from storage.queries import partner_name

log = logging.getLogger("dpor.worker")

CRASH_AT_ENV = "DPOR_TEST_CRASH_AT"
"""Test only: a point name (`card.claimed`, `dm.delivered`, `apply.started`, ...; see `_crash`) at which
the process kills itself with SIGKILL, so crash tests are deterministic. Never set it in production."""

# Slack errors that no retry will fix: the row goes straight to dead with the error kept.
PERMANENT_SLACK_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "msg_too_long",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "no_text",
        "user_not_found",
        "cant_update_message",
        "message_not_found",
        "user_not_in_channel",
    }
)

Recorder = Callable[[AsyncSession], Awaitable[None]]
"""What a delivery writes in the transaction that records its outcome (a card's ts, a channel's hold)."""


class Undeliverable(Exception):
    """Delivery failed; retry after `retry_after` seconds unless `permanent`.

    `rate_limited` (Slack's 429) does not count as an attempt; `channel` is the channel Slack limited.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        rate_limited: bool = False,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.channel = channel


def backoff(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with jitter: attempt 1 waits 1-2 s, attempt 8 between 128 and 256 s."""
    return random.uniform(0.5, 1.0) * min(cap, base**attempt)


class OutboxWorker:
    def __init__(
        self,
        db: Database,
        policy: Policy,
        client: AsyncWebClient,
        providers: Providers,
        *,
        name: str | None = None,
        poll_interval: float = 1.0,
        sweep_interval: float = 30.0,
        lease: timedelta = timedelta(seconds=30),
        max_attempts: int = 8,
        concurrency: int = 20,
        remind_after: timedelta | None = None,
        shutdown_grace: float = 5.0,
    ) -> None:
        self.db = db
        self.policy = policy
        self.client = client
        self.providers = providers
        # Unique per process start, so a restarted process never passes for the one that died.
        self.name = name or f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.lease = lease
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.remind_after = remind_after
        self.shutdown_grace = shutdown_grace
        self.crash_at = os.environ.get(CRASH_AT_ENV) or None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Rows this process holds (claimed, not yet recorded), and outcome writes under way.
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._recording: set[asyncio.Task[None]] = set()
        # Channels Slack answered 429 for, and until when this process leaves them alone.
        self._holds: dict[str, datetime] = {}

    def wake(self) -> None:
        """Deliver now rather than at the next poll (called after a commit that wrote rows)."""
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
            claimed = 0
            try:
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + self.sweep_interval
                    await self.sweep()
                free = self.concurrency - len(self._inflight)
                if free > 0:
                    for row in await self._claim(free):
                        self._inflight[row.id] = asyncio.create_task(
                            self._handle(row), name=f"dpor-outbox-{row.id}"
                        )
                        claimed += 1
            except Exception:
                log.exception("outbox worker cycle failed; trying again shortly")
            if not claimed and not self._stopping:
                timeout = max(0.0, min(self.poll_interval, next_sweep - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)

    async def sweep(self) -> None:
        """Expire requests past their TTL and queue due reminders; every process may sweep at once."""
        expired = await lifecycle.expire_due(self.db, self.policy)
        reminded = await lifecycle.remind_due(self.db, self.remind_after) if self.remind_after else []
        if expired or reminded:
            log.info("expired requests %s; reminders queued for requests %s", expired, reminded)

    async def _claim(self, limit: int) -> list[OutboxMessage]:
        now = utcnow()
        earlier = aliased(OutboxMessage)
        # Rows sharing a key go one at a time, in id order: a card's post before its updates.
        blocked = exists().where(
            earlier.key == OutboxMessage.key, earlier.id < OutboxMessage.id, earlier.status == "pending"
        )
        query = (
            select(OutboxMessage)
            .where(
                OutboxMessage.status == "pending",
                OutboxMessage.available_at <= now,
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
                ~blocked,
            )
            .order_by(OutboxMessage.id)
            .limit(limit)
        )
        if not self.db.is_sqlite:
            # Rows another process is claiming right now stay locked until it commits: skip, don't wait.
            # (SQLite's claim is as safe: a write transaction there starts with BEGIN IMMEDIATE.)
            query = query.with_for_update(skip_locked=True, of=OutboxMessage)
        async with self.db.write(chain=False) as session:
            rows = list((await session.scalars(query)).all())
            if rows:
                await session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id.in_([r.id for r in rows]))
                    .values(
                        claimed_by=self.name,
                        claimed_until=now + self.lease,
                        attempts=OutboxMessage.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
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
                async with self.db.write(chain=False) as session:
                    await session.execute(
                        update(OutboxMessage)
                        .where(
                            OutboxMessage.id.in_(ids),
                            OutboxMessage.claimed_by == self.name,
                            OutboxMessage.status == "pending",
                        )
                        .values(claimed_until=utcnow() + self.lease)
                        .execution_options(synchronize_session=False)
                    )
            except Exception:
                log.warning("could not renew the lease of outbox rows %s", ids, exc_info=True)

    async def _handle(self, row: OutboxMessage) -> None:
        cancelled = False
        try:
            self._crash(f"{row.kind}.claimed")
            await self._deliver_and_record(row)
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
            self._wake.set()

    async def _deliver_and_record(self, row: OutboxMessage) -> None:
        if row.attempts > self.max_attempts:
            error = f"{row.attempts - 1} attempts, the last ended without an outcome (its process stopped)"
            await self._record(self._failed(row, Undeliverable(error, permanent=True)))
            return
        try:
            record = await self.deliver(row)
        except Undeliverable as exc:
            await self._record(self._failed(row, exc))
        except Exception as exc:
            log.exception("outbox row %s (%s) failed unexpectedly", row.id, row.kind)
            await self._record(self._failed(row, Undeliverable(f"{type(exc).__name__}: {exc}")))
        else:
            self._crash(f"{row.kind}.delivered")
            await self._record(self._finish(row, status="done", record=record, delivered_at=utcnow()))

    async def _record(self, write: Awaitable[None]) -> None:
        """Write an outcome to its end even if shutdown cancels the delivery waiting for it: what Slack
        accepted must not go unrecorded because we stopped."""
        task = asyncio.ensure_future(write)
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        await asyncio.shield(task)

    async def _finish(
        self, row: OutboxMessage, *, status: str, record: Recorder | None = None, **values: Any
    ) -> None:
        async with self.db.write(chain=False) as session:
            if record is not None:
                await record(session)
            result = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, OutboxMessage.claimed_by == self.name)
                .values(status=status, claimed_by=None, claimed_until=None, **values)
                .execution_options(synchronize_session=False)
            )
        if result.rowcount != 1:
            log.warning(
                "outbox row %s (%s) was taken over by another process while this one held it "
                "(its lease lapsed); it may have been delivered twice",
                row.id,
                row.kind,
            )

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
            unposted = self._card_unposted(row.payload["request_id"]) if row.kind == outbox.CARD else None
            await self._finish(row, status="dead", record=unposted, last_error=error, attempts=attempts)
            if row.kind == outbox.APPLY:
                await self._give_up_apply(row.payload["request_id"], error)
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
        await self._finish(
            row,
            status="pending",
            record=self._hold(exc.channel, until) if exc.channel else None,
            last_error=error,
            attempts=attempts,
            available_at=until,
        )

    def _hold(self, channel: str, until: datetime) -> Recorder:
        """Slack answered 429 for `channel`: every row for it waits until `until`, in every process."""
        self._holds[channel] = max(until, self._holds.get(channel, until))
        card_requests = select(ChangeRequest.id).where(ChangeRequest.card_channel == channel)
        for_channel = or_(
            OutboxMessage.payload["channel"].as_string() == channel,
            and_(
                OutboxMessage.kind.in_((outbox.CARD, outbox.REMIND)),
                OutboxMessage.payload["request_id"].as_integer().in_(card_requests),
            ),
        )

        async def hold(session: AsyncSession) -> None:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.status == "pending", OutboxMessage.available_at < until, for_channel)
                .values(available_at=until)
                .execution_options(synchronize_session=False)
            )

        return hold

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
            async with asyncio.timeout(2.0), self.db.write(chain=False) as session:
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id.in_(ids),
                        OutboxMessage.claimed_by == self.name,
                        OutboxMessage.status == "pending",
                    )
                    .values(claimed_by=None, claimed_until=None, attempts=OutboxMessage.attempts - 1)
                    .execution_options(synchronize_session=False)
                )
            log.info("released outbox rows %s: another process (or the next start) delivers them", ids)
        except Exception:
            log.warning(
                "could not release outbox rows %s; they wait for their lease to lapse", ids, exc_info=True
            )

    def _crash(self, point: str) -> None:
        """Test only (DPOR_TEST_CRASH_AT): die here as `kill -9` would. Points: `<kind>.claimed` (claimed,
        nothing sent), `<kind>.delivered` (Slack or the provider done, outcome not recorded), and
        `apply.started` / `apply.applied` (request applying; provider not called / called, not recorded)."""
        if point == self.crash_at:
            log.critical("%s=%s: killing this process", CRASH_AT_ENV, point)
            os.kill(os.getpid(), signal.SIGKILL)

    async def deliver(self, row: OutboxMessage) -> Recorder | None:
        """Make the row's calls; returns what to write with its outcome, if anything."""
        payload = row.payload
        if row.kind == outbox.APPLY:
            await self._apply(payload["request_id"])
        elif row.kind == outbox.CARD:
            return await self._card(row)
        elif row.kind == outbox.REMIND:
            await self._remind(payload["request_id"])
        elif row.kind == outbox.DM:
            await self._dm(payload["user_id"], payload["request_id"], payload["event"])
        elif row.kind == outbox.NOTIFY:
            await self._notify(payload["channel"], payload["request_id"], payload["event"])
        elif row.kind == outbox.NOTICE:
            channel = payload["channel"]
            await self._slack(channel, self.client.chat_postMessage, channel=channel, text=payload["text"])
        elif row.kind == outbox.EPHEMERAL:
            channel = payload["channel"]
            await self._slack(
                channel,
                self.client.chat_postEphemeral,
                channel=channel,
                user=payload["user_id"],
                text=safe(payload["text"]),  # refusals may echo names and button values
            )
        else:
            raise Undeliverable(f"unknown outbox kind {row.kind!r}", permanent=True)
        return None

    async def _slack(
        self, channel: str | None, method: Callable[..., Awaitable[AsyncSlackResponse]], /, **kwargs: Any
    ) -> AsyncSlackResponse:
        """One Web API call, unless Slack asked us to leave the channel alone for now."""
        if channel is not None:
            until = self._holds.get(channel)
            wait = (until - utcnow()).total_seconds() if until is not None else 0.0
            if wait > 0:
                raise Undeliverable(
                    f"{channel} is rate limited for {wait:.1f}s more", retry_after=wait, rate_limited=True
                )
            self._holds.pop(channel, None)
        try:
            return await method(**kwargs)
        except SlackApiError as exc:
            raise _slack_failure(exc, channel) from None
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise Undeliverable(f"Slack unreachable: {type(exc).__name__}") from None

    async def card_view(self, request_id: int) -> CardView:
        async with self.db.read() as session:
            req = await session.get(ChangeRequest, request_id)
            if req is None:
                raise Undeliverable(f"request {request_id} does not exist", permanent=True)
            sub = await session.get(Subscription, req.subscription_id)
            assert sub is not None
            approvers = (
                await session.scalars(
                    select(Approval.approver_id)
                    .where(Approval.request_id == req.id, Approval.decision == "approve")
                    .order_by(Approval.id)
                )
            ).all()
            return CardView(
                request=req,
                subscription=sub,
                current_name=await partner_name(session, req.previous_partner_id),
                new_name=await partner_name(session, req.partner_id),
                approvers=list(approvers),
                required=self.policy.required_approvals,
            )

    async def _card(self, row: OutboxMessage) -> Recorder:
        """Render the card from the database now; later card rows already committed are covered by it."""
        async with self.db.read() as session:
            covered = await session.scalar(
                select(func.max(OutboxMessage.id)).where(
                    OutboxMessage.key == row.key,
                    OutboxMessage.kind == outbox.CARD,
                    OutboxMessage.status == "pending",
                )
            )
        view = await self.card_view(row.payload["request_id"])
        req = view.request
        if req.card_channel is None:
            raise Undeliverable(f"request {req.id} has no approval channel", permanent=True)
        blocks, text = to_dicts(card_blocks(view)), card_text(view)
        posted: AsyncSlackResponse | None = None
        if req.card_ts is None:
            posted = await self._slack(
                req.card_channel,
                self.client.chat_postMessage,
                channel=req.card_channel,
                blocks=blocks,
                text=text,
            )
        else:
            await self._slack(
                req.card_channel,
                self.client.chat_update,
                channel=req.card_channel,
                ts=req.card_ts,
                blocks=blocks,
                text=text,
            )

        async def record(session: AsyncSession) -> None:
            if posted is not None:
                await session.execute(
                    update(ChangeRequest)
                    .where(ChangeRequest.id == req.id, ChangeRequest.card_ts.is_(None))
                    .values(card_channel=posted["channel"], card_ts=posted["ts"])
                    .execution_options(synchronize_session=False)
                )
            if covered is not None and covered > row.id:
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.key == row.key,
                        OutboxMessage.kind == outbox.CARD,
                        OutboxMessage.id > row.id,
                        OutboxMessage.id <= covered,
                        OutboxMessage.status == "pending",
                    )
                    .values(status="done", delivered_at=utcnow(), last_error=f"covered by row {row.id}")
                    .execution_options(synchronize_session=False)
                )

        return record

    async def _remind(self, request_id: int) -> None:
        view = await self.card_view(request_id)
        req = view.request
        if req.status != "pending" or req.card_channel is None:
            return  # decided since the reminder was queued: nothing to remind anyone of
        await self._slack(
            req.card_channel,
            self.client.chat_postMessage,
            channel=req.card_channel,
            thread_ts=req.card_ts,
            text=reminder_text(view),
        )

    async def _dm(self, user_id: str, request_id: int, event: str) -> None:
        view = await self.card_view(request_id)
        opened = await self._slack(None, self.client.conversations_open, users=user_id)
        channel = opened["channel"]["id"]
        await self._slack(
            channel,
            self.client.chat_postMessage,
            channel=channel,
            text=event_text(view, event),
            blocks=to_dicts(notification_blocks(view, event)),
        )

    async def _notify(self, channel: str, request_id: int, event: str) -> None:
        view = await self.card_view(request_id)
        await self._slack(
            channel,
            self.client.chat_postMessage,
            channel=channel,
            text=event_text(view, event),
            blocks=to_dicts(notification_blocks(view, event)),
        )

    def _card_unposted(self, request_id: int) -> Recorder:
        """A card Slack refused to post leaves a request nobody can approve: its requester is told, in
        the same transaction that marks the card's row dead."""

        async def record(session: AsyncSession) -> None:
            req = await session.get(ChangeRequest, request_id)
            if req is not None and req.card_ts is None and req.status == "pending":
                rows = outbox.Outbox()
                rows.dm(req.requester_id, req.id, "unposted")
                await rows.flush(session)

        return record

    async def _give_up_apply(self, request_id: int, error: str) -> None:
        """An apply row that died fails its request, so the card offers Retry instead of staying open."""
        try:
            if await lifecycle.start_apply(self.db, request_id) is not None:
                outcome = lifecycle.ApplyOutcome(ok=False, error=f"could not be applied: {error}")
                await lifecycle.finish_apply(self.db, self.policy, request_id, outcome)
        except Refusal as exc:
            log.info("request %s was decided meanwhile: %s", request_id, exc.message)

    async def _apply(self, request_id: int) -> None:
        req = await lifecycle.start_apply(self.db, request_id)
        if req is None:
            return
        self._crash("apply.started")
        provider = await self.providers.for_subscription(req.subscription_id)
        try:
            state = await provider.apply(req.subscription_id, req.partner_id)
        except ProviderError as exc:
            if exc.retryable and req.apply_attempts < self.max_attempts:
                raise Undeliverable(exc.message, retry_after=exc.retry_after) from None
            outcome = lifecycle.ApplyOutcome(ok=False, error=exc.message)
        except Exception as exc:
            # A provider bug must not leave the request applying (and its subscription blocked).
            log.exception("applying request %s failed unexpectedly", request_id)
            if req.apply_attempts < self.max_attempts:
                raise Undeliverable(f"{type(exc).__name__}: {exc}") from None
            outcome = lifecycle.ApplyOutcome(
                ok=False, error=f"unexpected error in the provider ({type(exc).__name__})"
            )
        else:
            outcome = lifecycle.ApplyOutcome(
                ok=True,
                partner_id=state.partner_id,
                partner_name=state.partner_name,
                detail={"provider": provider.name, "identity": state.identity, **state.detail},
            )
        self._crash("apply.applied")
        await lifecycle.finish_apply(self.db, self.policy, request_id, outcome)


def _slack_failure(exc: SlackApiError, channel: str | None) -> Undeliverable:
    response = exc.response
    error = str(response.get("error", "unknown_error")) if response is not None else "unknown_error"
    if getattr(response, "status_code", None) == 429:
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        try:
            retry_after = max(0.0, float(headers.get("retry-after", 1)))
        except (TypeError, ValueError):
            retry_after = 1.0
        where = f" for {channel}" if channel else ""
        return Undeliverable(
            f"Slack rate limited{where} (429), retry after {retry_after:g}s",
            retry_after=retry_after,
            rate_limited=True,
            channel=channel,
        )
    return Undeliverable(f"Slack answered {error}", permanent=error in PERMANENT_SLACK_ERRORS)
