"""The portal provider: DPOR proper, which Microsoft lets a subscription's owner set in the Azure portal only.

There is no API for an Enterprise Agreement subscription's Digital Partner of Record, so applying cannot
finish here: `apply` raises `AwaitingAttestation`, the Applier leaves the request applying and the card
shows the portal steps; an owner then says on the card that it is done (or could not be done), which
`bot.attest` records. What the subscription carries is what an owner last attested.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.providers import CannotRead, PartnerState
from storage import audit as chain
from storage.db import Database
from storage.queries import partner_name
from storage.requests import subscription

ATTESTATION = "attestation"
# The Azure portal of each cloud (DPOR_AZURE_CLOUD); the card names the subscription and the Partner ID.
PORTALS = {
    "public": "https://portal.azure.com",
    "china": "https://portal.azure.cn",
    "usgov": "https://portal.azure.us",
}


class AwaitingAttestation(Exception):
    """Applying is a person's job in the Azure portal: the request waits for an owner's attestation."""

    def __init__(self, subscription_id: str, partner_id: str) -> None:
        super().__init__(
            f"partner {partner_id} must be set on subscription {subscription_id} in the Azure portal "
            "by an owner, who then attests it on the card"
        )
        self.subscription_id = subscription_id
        self.partner_id = partner_id


def attested(data: dict[str, Any] | None) -> bool:
    """Whether an apply's audit data (or a request's result) is an owner's attestation."""
    return bool(data and data.get("attested") is True)


class PortalProvider:
    name = "portal"

    def __init__(self, db: Database, cloud: str = "public") -> None:
        self.db = db
        self.portal = PORTALS.get(cloud, PORTALS["public"])

    def awaiting(self) -> dict[str, Any]:
        """What the Applier records (`apply.started`, the request's result) before leaving it applying."""
        return {"awaiting": ATTESTATION, "provider": self.name, "portal": self.portal}

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        raise AwaitingAttestation(subscription_id, partner_id)

    async def current(self, subscription_id: str) -> PartnerState:
        """The partner an owner last attested, with who and when; CannotRead before any attestation
        (nobody but the portal can say what the subscription carries)."""
        async with self.db.read() as session:
            sub = await subscription(session, subscription_id)
            last = await chain.latest_of(session, subscription_id, ("apply.succeeded",))
            if sub is None or last is None or not attested(last.data):
                raise CannotRead(
                    "DPOR is set in the Azure portal only and no owner has attested it through dpor-bot yet"
                )
            pid = sub.partner_id
            return PartnerState(
                pid,
                await partner_name(session, pid),
                {"attested_by": last.data.get("attested_by"), "attested_at": _iso(last.at)},
                {"attested": True, "request_id": last.request_id, "note": last.data.get("note")},
            )


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")
