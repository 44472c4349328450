"""The ledger provider: the bot's own database is the record of each subscription's partner."""

from __future__ import annotations

from bot.providers import PartnerState
from storage.db import Database
from storage.queries import partner_name
from storage.requests import subscription


class LedgerProvider:
    name = "ledger"

    def __init__(self, db: Database) -> None:
        self.db = db

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        # Recording the change is the lifecycle's finish_apply; the ledger only echoes the directory.
        async with self.db.read() as session:
            return PartnerState(partner_id, await partner_name(session, partner_id), {"ledger": True})

    async def current(self, subscription_id: str) -> PartnerState:
        async with self.db.read() as session:
            sub = await subscription(session, subscription_id)
            pid = sub.partner_id if sub else None
            return PartnerState(pid, await partner_name(session, pid), {"ledger": True})
