"""Who can approve a subscription's requests now: the people a request needs, counts and reaches."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot.policy import Policy


async def eligible_approvers(
    session: AsyncSession, pol: Policy, subscription_id: str, requester_id: str | None
) -> list[str]:
    """The owners of the subscription (on it or on every subscription), in user-id order; the requester
    is left out unless DPOR_ALLOW_SELF_APPROVAL is on."""
    owners = await pol.roles.holders(session, "owner", subscription_id)
    if pol.allow_self_approval or requester_id is None:
        return owners
    return [user for user in owners if user != requester_id]
