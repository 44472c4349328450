"""The outbox worker: claims due rows, delivers them (Slack calls, provider applies), retries with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from datetime import timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import exists, func, or_, select, update
from sqlalchemy.orm import aliased

from bot import lifecycle, outbox
from bot.messages import CardView, card_blocks, card_text, event_text, notification_blocks, to_dicts
from bot.policy import Policy
from bot.providers import ProviderError, Providers
from storage.db import Database
from storage.models import Approval, ChangeRequest, OutboxMessage, Subscription, utcnow
from storage.queries import partner_name

log = logging.getLogger("dpor.worker")

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


class Undeliverable(Exception):
    """Delivery failed; retry after `retry_after` seconds unless `permanent`."""

    def __init__(self, message: str, *, permanent: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after


def backoff(attempt: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: attempt 1 waits up to 2 s, attempt 8 up to 256 s."""
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
        expire_interval: float = 30.0,
        lease: timedelta = timedelta(seconds=120),
        max_attempts: int = 8,
        batch: int = 20,
    ) -> None:
        self.db = db
        self.policy = policy
        self.client = client
        self.providers = providers
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.poll_interval = poll_interval
        self.expire_interval = expire_interval
        self.lease = lease
        self.max_attempts = max_attempts
        self.batch = batch
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def wake(self) -> None:
        """Deliver now rather than at the next poll (called after a commit that wrote rows)."""
        self._wake.set()

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name="dpor-outbox-worker")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_expiry = loop.time()
        while not self._stopping:
            try:
                if loop.time() >= next_expiry:
                    await lifecycle.expire_due(self.db, self.policy)
                    next_expiry = loop.time() + self.expire_interval
                delivered = await self.run_once()
            except Exception:
                log.exception("outbox worker cycle failed; trying again shortly")
                delivered = 0
            if delivered == 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                self._wake.clear()

    async def run_once(self) -> int:
        """Claim and deliver one batch; returns the number of rows handled."""
        rows = await self._claim()
        if rows:
            await asyncio.gather(*(self._handle(row) for row in rows))
        return len(rows)

    async def _claim(self) -> list[OutboxMessage]:
        now = utcnow()
        earlier = aliased(OutboxMessage)
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
            .limit(self.batch)
        )
        if not self.db.is_sqlite:
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
                    row.attempts += 1
        return rows

    async def _handle(self, row: OutboxMessage) -> None:
        try:
            await self.deliver(row)
        except Undeliverable as exc:
            await self._failed(row, str(exc), permanent=exc.permanent, retry_after=exc.retry_after)
        except Exception as exc:
            log.exception("outbox row %s (%s) failed unexpectedly", row.id, row.kind)
            await self._failed(row, f"{type(exc).__name__}: {exc}", permanent=False, retry_after=None)
        else:
            await self._finish(row, status="done", delivered_at=utcnow())

    async def _finish(self, row: OutboxMessage, *, status: str, **values: Any) -> None:
        async with self.db.write(chain=False) as session:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == row.id, OutboxMessage.claimed_by == self.name)
                .values(status=status, claimed_by=None, claimed_until=None, **values)
            )

    async def _failed(
        self, row: OutboxMessage, error: str, *, permanent: bool, retry_after: float | None
    ) -> None:
        if permanent or row.attempts >= self.max_attempts:
            log.error(
                "outbox row %s (%s) is dead after %s attempts: %s", row.id, row.kind, row.attempts, error
            )
            await self._finish(row, status="dead", last_error=error[:2000])
            return
        delay = retry_after if retry_after is not None else backoff(row.attempts)
        log.warning(
            "outbox row %s (%s) failed (attempt %s), retrying in %.1fs: %s",
            row.id,
            row.kind,
            row.attempts,
            delay,
            error,
        )
        await self._finish(
            row, status="pending", last_error=error[:2000], available_at=utcnow() + timedelta(seconds=delay)
        )

    async def deliver(self, row: OutboxMessage) -> None:
        payload = row.payload
        if row.kind == outbox.APPLY:
            await self._apply(payload["request_id"])
            return
        try:
            if row.kind == outbox.CARD:
                await self._card(row)
            elif row.kind == outbox.DM:
                await self._dm(payload["user_id"], payload["request_id"], payload["event"])
            elif row.kind == outbox.NOTIFY:
                await self._notify(payload["channel"], payload["request_id"], payload["event"])
            elif row.kind == outbox.NOTICE:
                await self.client.chat_postMessage(channel=payload["channel"], text=payload["text"])
            elif row.kind == outbox.EPHEMERAL:
                await self.client.chat_postEphemeral(
                    channel=payload["channel"], user=payload["user_id"], text=payload["text"]
                )
            else:
                raise Undeliverable(f"unknown outbox kind {row.kind!r}", permanent=True)
        except SlackApiError as exc:
            raise _slack_failure(exc) from None
        except (TimeoutError, OSError) as exc:
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

    async def _card(self, row: OutboxMessage) -> None:
        """Render the card from the database now; later card rows already committed are covered by it."""
        async with self.db.read() as session:
            covered = await session.scalar(
                select(func.max(OutboxMessage.id)).where(
                    OutboxMessage.key == row.key, OutboxMessage.status == "pending"
                )
            )
        view = await self.card_view(row.payload["request_id"])
        req = view.request
        blocks, text = to_dicts(card_blocks(view)), card_text(view)
        if req.card_ts is None:
            response = await self.client.chat_postMessage(channel=req.card_channel, blocks=blocks, text=text)
            async with self.db.write(chain=False) as session:
                await session.execute(
                    update(ChangeRequest)
                    .where(ChangeRequest.id == req.id)
                    .values(card_channel=response["channel"], card_ts=response["ts"])
                )
        else:
            await self.client.chat_update(channel=req.card_channel, ts=req.card_ts, blocks=blocks, text=text)
        if covered is not None and covered > row.id:
            async with self.db.write(chain=False) as session:
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.key == row.key,
                        OutboxMessage.id > row.id,
                        OutboxMessage.id <= covered,
                        OutboxMessage.status == "pending",
                    )
                    .values(status="done", delivered_at=utcnow(), last_error=f"covered by row {row.id}")
                )

    async def _dm(self, user_id: str, request_id: int, event: str) -> None:
        view = await self.card_view(request_id)
        opened = await self.client.conversations_open(users=user_id)
        text = event_text(view, event)
        await self.client.chat_postMessage(
            channel=opened["channel"]["id"], text=text, blocks=to_dicts(notification_blocks(view, event))
        )

    async def _notify(self, channel: str, request_id: int, event: str) -> None:
        view = await self.card_view(request_id)
        await self.client.chat_postMessage(
            channel=channel, text=event_text(view, event), blocks=to_dicts(notification_blocks(view, event))
        )

    async def _apply(self, request_id: int) -> None:
        req = await lifecycle.start_apply(self.db, request_id)
        if req is None:
            return
        provider = await self.providers.for_subscription(req.subscription_id)
        try:
            state = await provider.apply(req.subscription_id, req.partner_id)
        except ProviderError as exc:
            if exc.retryable and req.apply_attempts < self.max_attempts:
                raise Undeliverable(exc.message, retry_after=exc.retry_after) from None
            outcome = lifecycle.ApplyOutcome(ok=False, error=exc.message)
        else:
            outcome = lifecycle.ApplyOutcome(
                ok=True,
                partner_id=state.partner_id,
                partner_name=state.partner_name,
                detail={"provider": provider.name, "identity": state.identity, **state.detail},
            )
        await lifecycle.finish_apply(self.db, self.policy, request_id, outcome)


def _slack_failure(exc: SlackApiError) -> Undeliverable:
    response = exc.response
    error = str(response.get("error", "unknown_error")) if response is not None else "unknown_error"
    status = getattr(response, "status_code", None)
    if status == 429:
        retry_after = float(response.headers.get("retry-after", response.headers.get("Retry-After", 1)))
        return Undeliverable(
            f"Slack rate limited (429), retry after {retry_after:g}s", retry_after=retry_after
        )
    return Undeliverable(f"Slack answered {error}", permanent=error in PERMANENT_SLACK_ERRORS)
