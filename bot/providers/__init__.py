"""Partner providers: the systems that hold a subscription's partner of record. They know nothing of Slack."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.settings import Settings
from storage.db import Database


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


def provider_for(settings: Settings, db: Database) -> PartnerProvider:
    from bot.providers.ledger import LedgerProvider

    if settings.provider == "ledger":
        return LedgerProvider(db)
    raise NotImplementedError(f"DPOR_PROVIDER={settings.provider} is not available yet; use ledger")
