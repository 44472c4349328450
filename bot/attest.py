"""Attestation: an owner says on the card that a change awaiting the Azure portal was made there, or could
not be. The portal provider leaves its requests applying (`bot.providers.portal`); this finishes them
through `bot.apply.finish`, the one way an apply ends, so Done reads like any applied change (card, DM,
thread, notifications, checkpoint) and Could not like any failure (Retry shows the steps again).

Checked at submission time, in the transaction that records it: the request still awaits attestation,
and the person holds a role that may attest (`attest` in bot.policy.PERMISSIONS) on its subscription now.
A refusal writes `approval.denied` only, like a refused click.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from bot import apply, checkpoints, clicks, lifecycle, policy
from bot.errors import AlreadyDecided, BadInput, Refusal
from bot.policy import Policy
from bot.providers.portal import ATTESTATION
from bot.roles import prepare_request
from bot.text import clean
from storage.db import Database
from storage.models import ChangeRequest, RequestStatus
from storage.queries import partner_name

DONE, FAILED = "attest", "attest_failed"
MAX_NOTE = lifecycle.MAX_REASON


def awaits_attestation(req: ChangeRequest) -> bool:
    return req.status == RequestStatus.APPLYING and (req.result or {}).get("awaiting") == ATTESTATION


def validate_note(text: str, what: str) -> str:
    """The note (Done) or the reason (Could not): required, at most MAX_NOTE characters once cleaned."""
    text = clean(text or "").strip()
    if not text:
        raise BadInput(f"Say {what}: it is kept in the audit log.")
    if len(text) > MAX_NOTE:
        raise BadInput(f"That is {len(text)} characters long; keep it to {MAX_NOTE} or fewer.")
    return text


async def done(
    db: Database, pol: Policy, *, request_id: int | str, team_id: str | None, user_id: str, note: str
) -> ChangeRequest:
    """The owner set the partner in the portal: applying -> applied, attested by them with their note."""
    note = validate_note(note, "who made the change and what the portal showed")
    return await _finish(db, pol, DONE, request_id, team_id, user_id, note)


async def could_not(
    db: Database, pol: Policy, *, request_id: int | str, team_id: str | None, user_id: str, reason: str
) -> ChangeRequest:
    """The owner could not set it in the portal: applying -> failed with their reason (Retry possible)."""
    reason = validate_note(reason, "why it could not be done in the portal")
    return await _finish(db, pol, FAILED, request_id, team_id, user_id, reason)


async def _finish(
    db: Database, pol: Policy, act: str, request_id: int | str, team_id: str | None, user_id: str, text: str
) -> ChangeRequest:
    point = None
    await prepare_request(db, pol.roles, user_id, request_id)  # Azure as the role source: read before
    async with db.write() as session:
        req: ChangeRequest | None = None
        try:
            req = await lifecycle.load(session, request_id, team_id)
            await _check(session, pol, act, user_id, req)
            outcome = await _outcome(session, act, req, user_id, text)
            point = await apply.finish(session, pol, req, outcome, actor=user_id)
        except Refusal as exc:
            refusal = exc
        else:
            refusal = None
        if refusal is not None:  # answered inline in the form: no channel to answer in
            await clicks.deny(
                session, act, refusal, user_id=user_id, req=req, channel_id=None, raw=request_id
            )
    if refusal is not None:
        raise refusal
    checkpoints.published(point)
    assert req is not None
    return req


async def _check(session: AsyncSession, pol: Policy, act: str, user_id: str, req: ChangeRequest) -> None:
    if not awaits_attestation(req):
        if req.status == RequestStatus.APPLYING:
            raise AlreadyDecided(
                f"Request #{req.id} is being applied by its provider, not in the Azure portal."
            )
        if req.status == RequestStatus.FAILED:
            raise AlreadyDecided(
                f"Request #{req.id} already failed. An owner can Retry it on its card to show the portal "
                "steps again."
            )
        raise AlreadyDecided(lifecycle.decided_sentence(req))
    sub = await lifecycle.subscription_of(session, req)
    doing = "say it was set in the portal" if act == DONE else "say it could not be set in the portal"
    await policy.check(
        session,
        "attest",
        user_id,
        sub,
        roles=pol.roles,
        refusal=f"Only an owner of subscription {sub.name} (`{sub.id}`) can {doing} for request #{req.id}, "
        "and you do not hold the owner role on it now.",
    )


async def _outcome(
    session: AsyncSession, act: str, req: ChangeRequest, user_id: str, text: str
) -> apply.ApplyOutcome:
    portal = (req.result or {}).get("portal")
    if act == DONE:
        return apply.ApplyOutcome(
            ok=True,
            partner_id=req.partner_id,
            partner_name=await partner_name(session, req.partner_id),
            detail={
                "provider": "portal",
                "attested": True,
                "attested_by": user_id,
                "note": text,
                "portal": portal,
            },
        )
    return apply.ApplyOutcome(
        ok=False,
        error=f"it could not be set in the Azure portal: {text}",
        detail={"provider": "portal", "reported_by": user_id, "reason": text},
    )
