"""Applying an approved change through its subscription's partner provider, and recording the outcome.

An `apply` outbox row runs `Applier.deliver`: approved -> applying (audited), the provider call, then
applying -> applied | failed with the card, the requester's DM and the notifications, written by the
worker in the transaction that records the row's outcome. A provider is
idempotent (read, then create or update), so a retry after a crash does no harm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot import checkpoints, lifecycle
from bot.audit import Checkpoint
from bot.errors import SYSTEM_ACTOR, UnknownRequest
from bot.lifecycle import event
from bot.logs import bound
from bot.metrics import APPLIED, FAILED, RETRIED, Metrics
from bot.outbox import AfterCommit, Outbox, Recorder, Undeliverable
from bot.policy import Policy
from bot.providers import PartnerProvider, ProviderError, Providers
from bot.providers.portal import AwaitingAttestation
from storage import requests
from storage.db import Database
from storage.directory import subscription_by_id
from storage.models import ChangeRequest, OutboxMessage, RequestStatus, utcnow

log = logging.getLogger("dpor.apply")


@dataclass(frozen=True)
class ApplyOutcome:
    ok: bool
    partner_id: str | None = None
    partner_name: str | None = None
    detail: dict[str, Any] | None = None
    error: str | None = None


async def start_apply(
    db: Database, request_id: int, awaiting: dict[str, Any] | None = None
) -> ChangeRequest | None:
    """Move an approved request to applying (or pick up one left applying); None if there is nothing to do.

    `awaiting` (a provider a person finishes, such as portal's `{"awaiting": "attestation", ...}`): kept as
    the request's result and in `apply.started`; the card shows the steps, and the reminder clock restarts.
    """
    async with db.write(serial=False) as session:
        req = await requests.get(session, request_id, lock=True)
        if req is None or req.status not in (RequestStatus.APPROVED, RequestStatus.APPLYING):
            return None
        await _start_locked(session, req, awaiting)
        return req


async def _start_locked(session: AsyncSession, req: ChangeRequest, awaiting: dict[str, Any] | None) -> None:
    """start_apply inside the caller's transaction, on a request it locked, approved or applying."""
    attempts = req.apply_attempts + 1
    if awaiting:
        rows = lifecycle.effects(req)
        rows.thread(req.card_channel, req.id, "awaiting")
        await lifecycle.record(
            session,
            req,
            req.status,
            RequestStatus.APPLYING,
            event(req, SYSTEM_ACTOR, "apply.started", partner_id=req.partner_id, **awaiting)
            if req.status == RequestStatus.APPROVED
            else None,  # a retry's apply.started is the owner's click
            rows,
            apply_attempts=attempts,
            result=awaiting,
            reminded_at=None,
        )
    elif req.status == RequestStatus.APPROVED:
        entry = event(req, SYSTEM_ACTOR, "apply.started", partner_id=req.partner_id)
        await lifecycle.record(
            session,
            req,
            RequestStatus.APPROVED,
            RequestStatus.APPLYING,
            entry,
            lifecycle.effects(req),
            apply_attempts=attempts,
        )
    else:
        await lifecycle.record(
            session,
            req,
            RequestStatus.APPLYING,
            RequestStatus.APPLYING,
            None,
            Outbox(),
            apply_attempts=attempts,
        )


async def finish_apply(db: Database, pol: Policy, request_id: int, outcome: ApplyOutcome) -> ChangeRequest:
    """applying -> applied (the record follows; the chain's head is checkpointed) or failed (Retry possible
    for DPOR_REQUEST_TTL)."""
    async with db.write(serial=False) as session:
        req, point = await _finish_locked(session, pol, request_id, outcome)
    checkpoints.published(point)
    return req


async def _finish_locked(
    session: AsyncSession, pol: Policy, request_id: int, outcome: ApplyOutcome
) -> tuple[ChangeRequest, Checkpoint | None]:
    req = await requests.get(session, request_id, lock=True)
    if req is None:
        raise UnknownRequest(f"There is no request #{request_id}.")
    return req, await finish(session, pol, req, outcome)


async def finish(
    session: AsyncSession, pol: Policy, req: ChangeRequest, outcome: ApplyOutcome, actor: str = SYSTEM_ACTOR
) -> Checkpoint | None:
    """finish_apply inside the caller's transaction (`actor`: who finished it, e.g. an owner attesting);
    returns the checkpoint to publish once committed."""
    now = utcnow()
    result = {
        "partner_id": outcome.partner_id,
        "partner_name": outcome.partner_name,
        **(outcome.detail or {}),
    }
    rows = lifecycle.effects(req)
    if outcome.ok:
        # A provider that does not read the partner back applied the one requested.
        result["partner_id"] = outcome.partner_id or req.partner_id
        news, status = "applied", RequestStatus.APPLIED
        entry = event(
            req,
            actor,
            "apply.succeeded",
            **{"partner_id": req.partner_id, "previous_partner_id": req.previous_partner_id, **result},
        )
        values: dict[str, Any] = {"applied_at": now, "result": result, "error": None}
    else:
        news, status = "failed", RequestStatus.FAILED
        entry = event(
            req,
            actor,
            "apply.failed",
            partner_id=req.partner_id,
            error=outcome.error,
            **(outcome.detail or {}),
        )
        # A failed change may be retried for as long as a pending one waits for approval, no longer.
        values = {"error": outcome.error, "result": result, "expires_at": now + pol.request_ttl}
    rows.dm(req.requester_id, req.id, news)
    rows.thread(req.card_channel, req.id, news, **({} if outcome.ok else {"error": outcome.error}))
    rows.notify(await lifecycle.notify_targets(session, pol, req.subscription_id), req.id, news)
    await lifecycle.record(session, req, RequestStatus.APPLYING, status, entry, rows, **values)
    if not outcome.ok:
        return None
    await requests.set_partner(session, req.subscription_id, result["partner_id"], now)
    return await checkpoints.take(session, pol.audit_channel, checkpoints.APPLY)


class Applier:
    """Delivers `apply` outbox rows: start_apply, the provider call, and the outcome (applied or failed)
    as the row's recorder, so the worker writes it in the transaction that settles the row: one commit,
    and no window where the request is applied while its row is still claimed."""

    def __init__(
        self,
        db: Database,
        pol: Policy,
        providers: Providers,
        *,
        max_attempts: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.db = db
        self.policy = pol
        self.providers = providers
        self.max_attempts = max_attempts
        self.metrics = metrics or Metrics()

    async def deliver(self, row: OutboxMessage) -> Recorder | None:
        request_id = row.payload["request_id"]
        async with self.db.read() as session:  # the request and its subscription's provider: one read
            found = await requests.with_subscription(session, request_id)
            if found is None:
                return None
            provider = self.providers.of(found[1])
        # A provider a person finishes (portal) says what the request awaits; it stays applying until then.
        waits = getattr(provider, "awaiting", None)
        req = await start_apply(self.db, request_id, waits() if waits else None)
        if req is None:
            return None
        with bound(request_id=request_id, subscription=req.subscription_id):
            return await self._apply(req, provider)

    async def _apply(self, req: ChangeRequest, provider: PartnerProvider) -> Recorder | None:
        try:
            state = await provider.apply(req.subscription_id, req.partner_id)
        except AwaitingAttestation:
            log.info("request %s awaits an owner's attestation (%s provider)", req.id, provider.name)
            return None
        except ProviderError as exc:
            if exc.retryable and req.apply_attempts < self.max_attempts:
                self.metrics.apply(provider.name, RETRIED)
                raise Undeliverable(exc.message, retry_after=exc.retry_after) from None
            outcome = ApplyOutcome(ok=False, error=exc.message)
        except Exception as exc:
            # A provider bug must not leave the request applying (and its subscription blocked).
            log.exception("applying request %s failed unexpectedly", req.id)
            if req.apply_attempts < self.max_attempts:
                self.metrics.apply(provider.name, RETRIED)
                raise Undeliverable(f"{type(exc).__name__}: {exc}") from None
            outcome = ApplyOutcome(ok=False, error=f"unexpected error in the provider ({type(exc).__name__})")
        else:
            outcome = ApplyOutcome(
                ok=True,
                partner_id=state.partner_id,
                partner_name=state.partner_name,
                detail={"provider": provider.name, "identity": state.identity, **state.detail},
            )
        return self._finisher(req, provider.name, outcome)

    def _finisher(self, req: ChangeRequest, provider: str, outcome: ApplyOutcome) -> Recorder:
        """finish_apply as the row's recorder: written with the row's outcome; logged once committed."""

        async def record(session: AsyncSession) -> AfterCommit:
            _, point = await _finish_locked(session, self.policy, req.id, outcome)

            def committed() -> None:
                checkpoints.published(point)
                with bound(request_id=req.id, subscription=req.subscription_id):
                    self._finished(req, provider, outcome)

            return committed

        return record

    def _finished(self, req: ChangeRequest, provider: str, outcome: ApplyOutcome) -> None:
        self.metrics.apply(provider, APPLIED if outcome.ok else FAILED)
        if outcome.ok:
            log.info(
                "request %s applied: partner %s set by the %s provider", req.id, req.partner_id, provider
            )
        else:
            log.warning("request %s failed to apply (%s provider): %s", req.id, provider, outcome.error)

    def dead(self, row: OutboxMessage, error: str) -> Recorder:
        """An apply row that died fails its request, so the card offers Retry instead of staying open: in
        the transaction that marks the row dead, so no process that stops in between leaves the request
        applying (and its subscription blocked) behind a dead row."""
        request_id = row.payload["request_id"]

        async def record(session: AsyncSession) -> AfterCommit | None:
            req = await requests.get(session, request_id, lock=True)
            if req is None or req.status not in (RequestStatus.APPROVED, RequestStatus.APPLYING):
                return None  # decided meanwhile (or gone): nothing to fail
            sub = await subscription_by_id(session, req.subscription_id)
            if req.status == RequestStatus.APPROVED:
                await _start_locked(session, req, None)  # approved -> applying (apply.started): then failed
            outcome = ApplyOutcome(ok=False, error=f"could not be applied: {error}")
            await finish(session, self.policy, req, outcome)
            provider = self.providers.of(sub).name

            def committed() -> None:
                with bound(request_id=req.id, subscription=req.subscription_id):
                    self._finished(req, provider, outcome)

            return committed

        return record
