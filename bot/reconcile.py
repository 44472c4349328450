"""Drift: ask each subscription's provider what it carries now and compare it with the record.

A subscription drifts when its target names another partner than the bot's record (someone changed
it outside dpor-bot). Each new drift is audited (`partner.drift`) and announced to the notification
channels in one transaction; a drift already recorded, and unchanged since, is reported but not
recorded or announced again. The record is not changed: people decide what the partner should be.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from bot import audit, lifecycle
from bot.errors import SYSTEM_ACTOR
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.policy import Policy
from bot.providers import CannotRead, PartnerState, ProviderError, Providers
from storage import audit as chain
from storage import directory, queries, requests
from storage.db import Database
from storage.models import RequestStatus, Subscription, utcnow

log = logging.getLogger("dpor.reconcile")

# Statuses of a finding, in the order the table lists them.
DRIFT, ERROR, UNCHECKED, BUSY, IN_SYNC = "drift", "error", "unchecked", "busy", "in sync"
# A subscription on the portal provider: what an owner last attested (who and when), never a drift.
ATTESTED = "attested"
ORDER = (DRIFT, ERROR, UNCHECKED, BUSY, ATTESTED, IN_SYNC)


@dataclass(frozen=True)
class Finding:
    subscription_id: str
    name: str
    alias: str | None
    provider: str
    status: str
    recorded: str | None
    observed: str | None = None
    observed_name: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    # For a drift: when it was first recorded (now, if this run recorded it), and whether this run did.
    since: datetime | None = None
    announced: bool = False
    # Every partner the target credits when it credits several (azure-rbac): a drift even if one is recorded.
    credited: tuple[str, ...] = ()


IN_FLIGHT = (RequestStatus.APPROVED, RequestStatus.APPLYING)


async def reconcile(
    db: Database,
    providers: Providers,
    policy: Policy,
    *,
    actor: str = SYSTEM_ACTOR,
    concurrency: int = 8,
) -> list[Finding]:
    """Check every subscription; returns one finding each, drift first."""
    async with db.read() as session:
        subs = await queries.all_subscriptions(session)
        applying = await requests.in_flight(session)
    limit = asyncio.Semaphore(concurrency)

    async def check(sub: Subscription) -> Finding:
        async with limit:
            return await _check(db, providers, policy, sub, applying.get(sub.id), actor)

    findings = await asyncio.gather(*(check(sub) for sub in subs))
    return sorted(findings, key=lambda f: ORDER.index(f.status))


async def _check(
    db: Database,
    providers: Providers,
    policy: Policy,
    sub: Subscription,
    busy_with: int | None,
    actor: str,
) -> Finding:
    provider = await providers.for_subscription(sub.id)
    found = Finding(sub.id, sub.name, sub.alias, provider.name, IN_SYNC, sub.partner_id)
    if busy_with is not None:
        return replace(found, status=BUSY, message=f"request #{busy_with} is being applied")
    try:
        state = await provider.current(sub.id)
    except CannotRead as exc:
        return replace(found, status=UNCHECKED, message=exc.message)
    except ProviderError as exc:
        return replace(found, status=ERROR, message=exc.message)
    found = replace(
        found, observed=state.partner_id, observed_name=state.partner_name, identity=state.identity
    )
    if state.detail.get("attested"):
        who, at = state.identity.get("attested_by"), state.identity.get("attested_at")
        return replace(found, status=ATTESTED, message=f"attested by {who} at {at}")
    if len(state.credited) > 1:  # observed lists them all; observed_name is set once their names are read
        found = replace(found, observed=",".join(state.credited), credited=state.credited)
    elif state.partner_id == sub.partner_id:
        return found
    return await _record(db, policy, replace(found, status=DRIFT), state, actor)


async def _record(db: Database, policy: Policy, found: Finding, state: PartnerState, actor: str) -> Finding:
    """Audit and announce a new drift in one transaction; a known one is only reported."""
    async with db.write() as session:
        sub = await requests.subscription(session, found.subscription_id)
        if sub is None or sub.partner_id != found.recorded:
            return replace(found, status=BUSY, message="the record changed while it was checked")
        # Approved since the run's first read (and perhaps at the provider already): the bot's own change
        # under way, not drift. Read again here, where the drift would be recorded.
        now_open = await requests.open_for(session, sub.id)
        if now_open is not None and now_open.status in IN_FLIGHT:
            return replace(found, status=BUSY, message=f"request #{now_open.id} is being applied")
        names = await directory.partner_names(session, [found.recorded, found.observed, *found.credited])
        several = [{"id": pid, "name": names.get(pid)} for pid in found.credited]
        if several:
            listed = ", ".join(f"{p['name'] or '?'} ({p['id']})" for p in several)
            found = replace(found, observed_name=f"several partners: {listed}")
        last = await chain.latest_of(session, sub.id, ("partner.drift", "apply.succeeded"))
        if (
            last is not None
            and last.action == "partner.drift"
            and last.data.get("recorded_partner_id") == found.recorded
            and last.data.get("observed_partner_id") == found.observed
        ):
            return replace(found, since=last.at)
        await audit.append(
            session,
            audit.Entry(
                actor=actor,
                action="partner.drift",
                subscription_id=sub.id,
                data={
                    "provider": found.provider,
                    "recorded_partner_id": found.recorded,
                    "observed_partner_id": found.observed,
                    "observed_partner_name": found.observed_name,
                    **({"observed_partner_ids": list(found.credited)} if found.credited else {}),
                    "identity": state.identity,
                },
            ),
        )
        rows = Outbox()
        rows.drift(
            await lifecycle.notify_targets(session, policy, sub.id),
            {
                "subscription_id": sub.id,
                "name": sub.name,
                "alias": sub.alias,
                "provider": found.provider,
                "recorded": found.recorded,
                "recorded_name": names.get(found.recorded or ""),
                "observed": found.observed,
                "observed_name": found.observed_name or names.get(found.observed or ""),
                **({"several": several} if several else {}),
            },
        )
        await rows.flush(session)
    log.warning(
        "drift on subscription %s: the record says %s, %s reports %s",
        found.subscription_id,
        found.recorded or "no partner",
        found.provider,
        found.observed or "no partner",
        extra={"subscription": found.subscription_id},
    )
    return replace(found, since=utcnow(), announced=True)


async def periodically(
    db: Database,
    providers: Providers,
    policy: Policy,
    every: timedelta,
    *,
    metrics: Metrics | None = None,
) -> None:
    """`serve`'s DPOR_RECONCILE_EVERY: reconcile, wait, repeat until cancelled; a failed run is logged."""
    metrics = metrics or Metrics()
    while True:
        await asyncio.sleep(every.total_seconds())
        try:
            findings = await reconcile(db, providers, policy)
        except Exception:
            metrics.reconciled(None)
            log.exception("reconcile failed; trying again in %s", every)
            continue
        drift = [f for f in findings if f.status == DRIFT]
        metrics.reconciled([f.provider for f in drift if f.announced])
        log.info(
            "reconcile: %s subscriptions, %s drifted (%s new), %s could not be read",
            len(findings),
            len(drift),
            sum(f.announced for f in drift),
            sum(f.status == ERROR for f in findings),
        )
