"""What the running bot counts, in Prometheus' text format (GET /metrics; README: Metrics).

One `Metrics` per `Bot`, with a registry of its own (never prometheus_client's global one), so several
bots in one process count apart. Listeners count requests through `BotContext.metrics`; the applier,
reconcile and the sweep are handed the same object. The outbox gauges are read from the database when
Prometheus scrapes, not kept in memory: every process reports the one shared table.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from bot.providers import NAMES, OLD_NAMES
from storage import outbox
from storage.db import Database
from storage.models import utcnow

log = logging.getLogger("dpor.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Outcomes of a Slack request: done; refused (a refusal, a usage error, another workspace, a malformed or
# late body); failed inside the bot (its log line has an error reference); or refused at the HTTP edge
# because its signature was missing, wrong or already seen.
OK, REFUSED, ERROR, UNAUTHENTICATED = "ok", "refused", "error", "unauthenticated"
# The kind of a request refused before it was read (or that no listener took).
UNKNOWN = "unknown"
# Outcomes of an apply: the change is recorded as applied; it failed for good (the card offers Retry);
# the provider failed in a way worth trying again (the outbox retries it with backoff).
APPLIED, FAILED, RETRIED = "applied", "failed", "retried"
# Seconds: Slack waits 3 s for an answer, and the alert worth setting is on 1 s (README).
ACK_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class _Response(Protocol):
    status: int


Handler = Callable[[Any], Awaitable[_Response]]


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "dpor_requests",
            "Slack requests handled, by kind (a /dpor subcommand, a button, or unknown) and outcome",
            ["kind", "outcome"],
            registry=registry,
        )
        self.ack_seconds = Histogram(
            "dpor_ack_seconds",
            "Seconds from a request's arrival at /slack/events to the bot's answer",
            buckets=ACK_BUCKETS,
            registry=registry,
        )
        self.applies = Counter(
            "dpor_applies",
            "Changes applied through a provider, by provider and outcome (applied, failed, retried)",
            ["provider", "outcome"],
            registry=registry,
        )
        self.drift = Counter(
            "dpor_drift_found",
            "New drift found by reconcile (a target that names another partner than the record), by provider",
            ["provider"],
            registry=registry,
        )
        self.reconciles = Counter(
            "dpor_reconcile_runs",
            "Runs of DPOR_RECONCILE_EVERY's reconcile, by outcome (ok, error)",
            ["outcome"],
            registry=registry,
        )
        self.expiries = Counter(
            "dpor_expiries",
            "Pending requests the sweep expired (past DPOR_REQUEST_TTL)",
            registry=registry,
        )
        self._outbox = _OutboxGauges()
        registry.register(self._outbox)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        for outcome in (REFUSED, ERROR, UNAUTHENTICATED):
            self.requests.labels(UNKNOWN, outcome)
        for provider in (*NAMES, *OLD_NAMES):  # an old name keeps its series (dashboards)
            for outcome in (APPLIED, FAILED, RETRIED):
                self.applies.labels(provider, outcome)
            self.drift.labels(provider)
        for outcome in (OK, ERROR):
            self.reconciles.labels(outcome)

    def expect(self, kinds: Iterable[str]) -> None:
        """Kinds of request a listener answers: their series exist (at 0) before the first one comes."""
        for kind in kinds:
            for outcome in (OK, REFUSED, ERROR):
                self.requests.labels(kind, outcome)

    def request(self, kind: str, outcome: str) -> None:
        self.requests.labels(kind, outcome).inc()

    def apply(self, provider: str, outcome: str) -> None:
        self.applies.labels(provider, outcome).inc()

    def reconciled(self, new_drift: Iterable[str] | None) -> None:
        """One reconcile run: None when it failed, else the provider of each new drift it recorded."""
        self.reconciles.labels(ERROR if new_drift is None else OK).inc()
        for provider in new_drift or ():
            self.drift.labels(provider).inc()

    def timed(self, handler: Handler) -> Handler:
        """`handler` (Slack's endpoint) with its answer timed; a request it answers 4xx or 5xx never reached
        a listener, so it is counted here as `unknown`."""

        async def timed(request: Any) -> _Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except Exception:
                self.request(UNKNOWN, ERROR)
                raise
            finally:
                self.ack_seconds.observe(time.perf_counter() - started)
            if response.status >= 400:
                self.request(UNKNOWN, _edge_outcome(response.status))
            return response

        return timed

    async def exposition(self, db: Database) -> bytes:
        """The text Prometheus scrapes: this process's counters and the outbox as it stands now."""
        try:
            async with db.read() as session:
                stats: outbox.Stats | None = await outbox.stats(session)
        except Exception as exc:
            log.warning("metrics: the outbox could not be read: %s", type(exc).__name__)
            stats = None
        self._outbox.stats = stats
        return generate_latest(self.registry)


def authorised(expected: str | None, header: str | None) -> bool:
    """Whether a scrape may read /metrics: always without DPOR_METRICS_TOKEN, else with it as a bearer."""
    if expected is None:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode())


def _edge_outcome(status: int) -> str:
    if status == 401:
        return UNAUTHENTICATED
    return ERROR if status >= 500 else REFUSED


class _OutboxGauges:
    """The outbox gauges, from the read `Metrics.exposition` made for this scrape."""

    def __init__(self) -> None:
        self.stats: outbox.Stats | None = None

    def describe(self) -> list[Metric]:
        return []  # the gauges are described when collected; a failed read leaves them out

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        yield GaugeMetricFamily(
            "dpor_database_up",
            "1 when this scrape read the outbox from the database, else 0",
            float(stats is not None),
        )
        if stats is None:
            return
        yield GaugeMetricFamily("dpor_outbox_pending", "Outbox rows waiting to be delivered", stats.pending)
        yield GaugeMetricFamily(
            "dpor_outbox_dead", "Outbox rows buried after their last attempt (`dpor-bot outbox`)", stats.dead
        )
        age = (utcnow() - stats.oldest_due).total_seconds() if stats.oldest_due else 0.0
        yield GaugeMetricFamily(
            "dpor_outbox_oldest_due_seconds",
            "Seconds the oldest due, undelivered outbox row has been due (0 when none is)",
            max(age, 0.0),
        )
