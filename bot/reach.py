"""Reaching the owners a new request needs: a DM each, with the request and a link to its card."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bot.approvers import eligible_approvers
from bot.outbox import Outbox
from bot.policy import Policy
from storage.models import ChangeRequest


@dataclass(frozen=True)
class Reach:
    """Whom a new request's DMs went to: `messaged` of the `eligible` owners (other than the requester),
    none when there were more than `cap` (DPOR_DM_APPROVERS_MAX; 0 turns the DMs off)."""

    messaged: int
    eligible: int
    cap: int

    @property
    def over_cap(self) -> bool:
        return self.cap > 0 and self.eligible > self.cap


async def ask_approvers(
    session: AsyncSession, pol: Policy, req: ChangeRequest, rows: Outbox
) -> Reach | None:
    """Queue a DM to each owner who can approve `req` (never its requester), in the request's transaction;
    they are keyed to the card, so each goes out once the card is posted and can link to it. A request
    with no card (no channel to post it in) asks nobody: there is no card to link to."""
    if not req.card_channel:
        return None
    owners = await eligible_approvers(session, pol, req.subscription_id, req.requester_id)
    owners = [owner for owner in owners if owner != req.requester_id]
    if pol.dm_approvers_max == 0 or len(owners) > pol.dm_approvers_max:
        return Reach(messaged=0, eligible=len(owners), cap=pol.dm_approvers_max)
    rows.ask(owners, req.id)
    return Reach(messaged=len(owners), eligible=len(owners), cap=pol.dm_approvers_max)


def reach_of(req: ChangeRequest) -> Reach | None:
    """The reach `create_request` recorded on the request it opened (None on a request read back later)."""
    reach = getattr(req, "approvers_reach", None)
    return reach if isinstance(reach, Reach) else None
