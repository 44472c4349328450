"""Partner providers: the systems that hold a subscription's partner of record. They know nothing of Slack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.settings import ConfigError, Settings
from storage.db import Database
from storage.models import Subscription


@dataclass(frozen=True)
class PartnerState:
    """What the target says after a change: the partner it now carries and who carries it."""

    partner_id: str | None
    partner_name: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)


class ProviderError(Exception):
    """Applying failed. `retryable` errors (throttling, outages, timeouts) are tried again later."""

    def __init__(self, message: str, *, retryable: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class PartnerProvider(Protocol):
    name: str

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState: ...

    async def current(self, subscription_id: str) -> PartnerState: ...


class Providers:
    """Chooses the provider for each subscription: its own `provider` column, else DPOR_PROVIDER."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._built: dict[str, PartnerProvider] = {}
        self.get(settings.provider)  # a provider that cannot be built stops start-up

    def get(self, name: str) -> PartnerProvider:
        if name not in self._built:
            self._built[name] = _build(name, self.settings, self.db)
        return self._built[name]

    async def for_subscription(self, subscription_id: str) -> PartnerProvider:
        async with self.db.read() as session:
            sub = await session.get(Subscription, subscription_id)
        return self.get((sub.provider if sub else None) or self.settings.provider)


def _build(name: str, settings: Settings, db: Database) -> PartnerProvider:
    from bot.providers.ledger import LedgerProvider

    if name == "ledger":
        return LedgerProvider(db)
    raise ConfigError(f"DPOR_PROVIDER: {name} is not available in this version; use ledger")
