"""Partner providers: the systems that hold a subscription's partner of record. They know nothing of Slack."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from bot.settings import ConfigError, Settings
from storage.db import Database
from storage.models import Subscription
from storage.queries import partner_name, providers_named
from storage.requests import subscription

log = logging.getLogger("dpor.providers")
NAMES = ("ledger", "azure-rbac", "azure-pal", "webhook", "portal")
# Old names that still work (DPOR_PROVIDER, a subscription's provider column), each logged once per process.
OLD_NAMES = {"azure": "azure-pal"}
_warned: set[str] = set()
# A Retry-After longer than this is a misbehaving server; the outbox waits this long at most.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True)
class PartnerState:
    """What the target says: the partner it carries, who carries it, and what the bot noticed on the way."""

    partner_id: str | None
    partner_name: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)
    # Recorded with the apply (e.g. the directory's name when the target names the partner otherwise).
    detail: dict[str, Any] = field(default_factory=dict)
    # Every partner the target credits (azure-rbac): several means partner_id is None and reconcile says so.
    credited: tuple[str, ...] = ()


class ProviderError(Exception):
    """Applying failed. `retryable` errors (throttling, outages, timeouts) are tried again later."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class CannotRead(ProviderError):
    """The provider cannot tell what the target carries now (reconcile leaves the subscription unchecked)."""


class PartnerProvider(Protocol):
    name: str

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState: ...

    async def current(self, subscription_id: str) -> PartnerState: ...


class Providers:
    """Chooses the provider for each subscription: its own `provider` column, else DPOR_PROVIDER."""

    def __init__(self, settings: Settings, db: Database, *, build_default: bool = True) -> None:
        self.settings = settings
        self.db = db
        self._built: dict[str, PartnerProvider] = {}
        if build_default:  # a provider that cannot be built stops start-up (`doctor` builds each itself)
            self.get(settings.provider)

    def get(self, name: str) -> PartnerProvider:
        if name not in self._built:
            self._built[name] = _build(name, self.settings, self.db)
        return self._built[name]

    async def check(self) -> None:
        """Build every provider a subscription names, so one that is misconfigured stops start-up too."""
        async with self.db.read() as session:
            names = await providers_named(session)
        for name in names:
            self.get(name)

    async def for_subscription(self, subscription_id: str) -> PartnerProvider:
        async with self.db.read() as session:
            sub = await subscription(session, subscription_id)
        return self.of(sub)

    def of(self, sub: Subscription | None) -> PartnerProvider:
        """The provider of a subscription the caller has read (None: gone, so DPOR_PROVIDER)."""
        name = (sub.provider if sub else None) or self.settings.provider
        try:
            return self.get(name)
        except ConfigError as exc:
            # Configured after start-up (a column set since): fail the request visibly, not the worker.
            return Unavailable(name, str(exc))


class Unavailable:
    """A provider that cannot be built; every call fails with the reason, which an operator can fix."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        raise ProviderError(f"the {self.name} provider is not configured: {self.reason}")

    async def current(self, subscription_id: str) -> PartnerState:
        raise ProviderError(f"the {self.name} provider is not configured: {self.reason}")


def _build(name: str, settings: Settings, db: Database) -> PartnerProvider:
    if name == "ledger":
        from bot.providers.ledger import LedgerProvider

        return LedgerProvider(db)
    if name in ("azure-pal", "azure"):
        try:
            from bot.providers.azure import AzureProvider
        except ImportError as exc:
            raise ConfigError(
                f"DPOR_PROVIDER: {name} needs the Azure extra ({exc.name} is missing): "
                "pip install 'dpor-bot[azure]'"
            ) from None
        pal = AzureProvider(settings, db)
        if name in OLD_NAMES:
            _deprecated(name)
            pal.name = name  # metrics, reconcile and the audit keep the name the operator configured
        return pal
    if name == "portal":
        from bot.providers.portal import PortalProvider

        return PortalProvider(db, getattr(settings, "azure_cloud", "public"))
    if name == "azure-rbac":
        try:
            from bot.providers.azure_rbac import AzureRbacProvider
        except ImportError as exc:
            raise ConfigError(
                f"DPOR_PROVIDER: azure-rbac needs the Azure extra ({exc.name} is missing): "
                "pip install 'dpor-bot[azure]'"
            ) from None
        return AzureRbacProvider(settings, db)
    if name == "webhook":
        from bot.providers.webhook import WebhookProvider

        return WebhookProvider(settings, db)
    raise ConfigError(f"DPOR_PROVIDER: expected one of {', '.join(NAMES)} (got {name!r})")


def _deprecated(name: str) -> None:
    """One line per process for an old provider name, saying what to write instead."""
    if name not in _warned:
        _warned.add(name)
        log.warning(
            "DPOR_PROVIDER=%s is the old name of %s; it keeps working, but write %s (in DPOR_PROVIDER and "
            "`dpor-bot subscriptions add --provider`)",
            name,
            OLD_NAMES[name],
            OLD_NAMES[name],
        )


async def name_check(db: Database, partner_id: str | None, returned: str | None) -> dict[str, Any]:
    """When the target names the partner otherwise than the directory, say so (for the card and audit)."""
    if not partner_id or not returned:
        return {}
    async with db.read() as session:
        known = await partner_name(session, partner_id)
    if returned == known:
        return {}
    return {"directory_name": known, "name_differs": True}


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None if absent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = lowered.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                continue
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return None
