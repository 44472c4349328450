"""Clicks on a request (approve, reject, retry): facts read once, a pure decision, one place that acts on it.

Everything happens in one transaction: load the request, expire it if its time is up, read the facts,
decide, and either record the transition or record the refusal (`approval.denied`, and an ephemeral
answer to the clicker). Roles are read now, never taken from the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, lifecycle, policy
from bot.errors import (
    AlreadyDecided,
    NotOwner,
    OpenRequestExists,
    Refusal,
    RequestExpired,
    SelfApproval,
    moment,
    person,
)
from bot.lifecycle import event
from bot.outbox import Outbox
from bot.policy import Policy
from bot.roles import RolesUnavailable, current_owner_approvals, prepare_request
from storage import requests
from storage.db import Database
from storage.models import ChangeRequest, RequestStatus, Subscription, utcnow

APPROVE, REJECT, RETRY = "approve", "reject", "retry"


@dataclass(frozen=True)
class Decision:
    """What a click did: the request as it now stands, and the approvals counted so far."""

    request: ChangeRequest
    approvals: int
    required: int
    decided: bool


@dataclass(frozen=True)
class Facts:
    """What a click is decided on, read in the click's transaction."""

    act: str
    user_id: str
    request: ChangeRequest
    subscription: Subscription
    roles: frozenset[str]
    requester_roles: frozenset[str]
    mine: str | None  # what this person already decided on the request
    approvers: tuple[str, ...]  # approvals by people who are owners now
    open_request: ChangeRequest | None  # the subscription's open request (for a retry)
    newer: ChangeRequest | None  # a request for the subscription made after this one (for a retry)
    now: datetime


@dataclass(frozen=True)
class Verdict:
    """The transition a click causes: `withdraw` when the requester may no longer ask for it."""

    expected: str
    new: str
    approvals: int
    final: bool
    withdraw: bool = False


def decide(facts: Facts, pol: Policy) -> Verdict:
    """Decide a click from facts alone; a refusal raises with a sentence for the clicker."""
    req, sub, act = facts.request, facts.subscription, facts.act
    if act == RETRY:
        if req.status != RequestStatus.FAILED:
            raise AlreadyDecided(
                f"Request #{req.id} is {req.status}, not failed, so there is nothing to retry."
            )
    elif req.status != RequestStatus.PENDING:
        raise AlreadyDecided(lifecycle.decided_sentence(req))
    if not policy.allowed(act, facts.roles):
        raise NotOwner(
            f"Only an owner of subscription {sub.name} (`{sub.id}`) can {act} this request, "
            "and you do not hold the owner role on it now."
        )
    count = len(facts.approvers)
    if act == RETRY:
        _retryable(facts, pol)
        return Verdict(RequestStatus.FAILED, RequestStatus.APPLYING, count, final=True)
    if not policy.allowed("request", facts.requester_roles):
        # Whoever asked may no longer ask for this subscription: nobody may carry the request on.
        return Verdict(RequestStatus.PENDING, RequestStatus.CANCELLED, count, final=True, withdraw=True)
    if act == REJECT:
        if facts.mine is not None:
            raise AlreadyDecided(f"You already approved request #{req.id}; you cannot also reject it.")
        return Verdict(RequestStatus.PENDING, RequestStatus.REJECTED, count, final=True)
    if facts.user_id == req.requester_id and not pol.allow_self_approval:
        raise SelfApproval("You asked for this change, so another owner must approve it.")
    if facts.mine is not None:
        raise AlreadyDecided(
            f"You already approved request #{req.id}; it has {count} of "
            f"{pol.required_approvals} approvals and needs another owner."
        )
    final = count + 1 >= pol.required_approvals
    return Verdict(
        RequestStatus.PENDING, RequestStatus.APPROVED if final else RequestStatus.PENDING, count + 1, final
    )


def _retryable(facts: Facts, pol: Policy) -> None:
    """A failed request may be applied again only while nothing has moved on since it was approved, and
    while it is still approved: by DPOR_REQUIRED_APPROVALS people who are owners now."""
    req, sub = facts.request, facts.subscription
    if facts.open_request is not None:
        raise OpenRequestExists(
            f"Request #{facts.open_request.id} for {sub.name} is open now, so #{req.id} cannot be retried; "
            f"decide or cancel #{facts.open_request.id} first.",
            request_id=facts.open_request.id,
        )
    if facts.newer is not None:
        raise AlreadyDecided(
            f"Request #{facts.newer.id} for {sub.name} was made after #{req.id}, so #{req.id} is superseded "
            "and cannot be retried. Make a new request if this change is still wanted."
        )
    if sub.partner_id != req.previous_partner_id:
        raise AlreadyDecided(
            f"The partner of record of {sub.name} has changed since request #{req.id} was approved, "
            "so it cannot be retried. Make a new request if this change is still wanted."
        )
    if req.expires_at <= facts.now:
        raise RequestExpired(
            f"Request #{req.id} could be retried until {moment(req.expires_at)}. "
            "Make a new request if this change is still wanted."
        )
    if len(facts.approvers) < pol.required_approvals:
        # An approval counts only while its approver is an owner, at a retry as at the decision: else
        # one owner could apply, alone, a change approved by others who have since lost the role.
        raise AlreadyDecided(
            f"Request #{req.id} has {len(facts.approvers)} of the {pol.required_approvals} approvals it "
            f"needs from people who are owners of {sub.name} now (an approver's owner role was removed "
            "since), so it cannot be retried. Make a new request if this change is still wanted."
        )


async def _facts(session: AsyncSession, act: str, user_id: str, req: ChangeRequest, pol: Policy) -> Facts:
    sub = await lifecycle.subscription_of(session, req)
    return Facts(
        act=act,
        user_id=user_id,
        request=req,
        subscription=sub,
        roles=await pol.roles.roles(session, user_id, sub.id),
        requester_roles=await pol.roles.roles(session, req.requester_id, sub.id),
        mine=await requests.decision_of(session, req.id, user_id),
        approvers=tuple(await current_owner_approvals(session, pol.roles, req.id, sub.id)),
        open_request=await requests.open_for(session, sub.id) if act == RETRY else None,
        newer=await requests.newer_than(session, req) if act == RETRY else None,
        now=utcnow(),
    )


async def _act(
    session: AsyncSession, facts: Facts, verdict: Verdict, pol: Policy, reason: str = ""
) -> Decision:
    """Record the verdict. The conditional UPDATE comes first: when it finds the request moved on,
    nothing of this click has been written and the refusal is recorded in its place.
    `reason`: why the decider rejects (the request's decision_note and the audit event's `reason`)."""
    req, user_id = facts.request, facts.user_id
    if verdict.withdraw:
        await lifecycle.withdraw(session, req, "requester_no_longer_authorised", pol)
        raise AlreadyDecided(
            f"Request #{req.id} was withdrawn: {person(req.requester_id)}, who asked for it, "
            f"no longer holds a role that may request changes on {facts.subscription.name}."
        )
    rows = lifecycle.effects(req)
    now = utcnow()
    if facts.act == RETRY:
        rows.apply(req.id)
        rows.thread(req.card_channel, req.id, "retried", by=user_id)
        # A retry gets the whole budget of attempts again, not what was left of the failed one.
        entry = event(req, user_id, "apply.started", retry=True)
        await lifecycle.record(
            session, req, verdict.expected, verdict.new, entry, rows, error=None, apply_attempts=0
        )
    elif facts.act == REJECT:
        rows.dm(req.requester_id, req.id, "rejected")
        rows.thread(req.card_channel, req.id, "rejected", by=user_id)
        rows.notify(await lifecycle.notify_targets(session, pol, req.subscription_id), req.id, "rejected")
        entry = event(req, user_id, "request.rejected", **({"reason": reason} if reason else {}))
        await lifecycle.record(
            session,
            req,
            verdict.expected,
            verdict.new,
            entry,
            rows,
            decided_by=user_id,
            decided_at=now,
            decision_note=reason or None,
        )
        await requests.add_decision(session, req.id, user_id, "reject")
    else:
        entry = event(
            req,
            user_id,
            "request.approved",
            approvals=verdict.approvals,
            required=pol.required_approvals,
            final=verdict.final,
        )
        decided = {"decided_by": user_id, "decided_at": now} if verdict.final else {}
        step = {"by": user_id, "count": verdict.approvals, "required": pol.required_approvals}
        rows.thread(req.card_channel, req.id, "approval", **step)
        if verdict.final:
            rows.apply(req.id)
            rows.dm(req.requester_id, req.id, "approved")
        await lifecycle.record(session, req, verdict.expected, verdict.new, entry, rows, **decided)
        await requests.add_decision(session, req.id, user_id, "approve")
    return Decision(req, verdict.approvals, pol.required_approvals, decided=verdict.final)


async def click(
    db: Database,
    pol: Policy,
    act: str,
    *,
    request_id: int | str,
    team_id: str,
    user_id: str,
    channel_id: str | None = None,
    reason: str = "",
) -> Decision:
    """Decide and record one click; a refusal is audited as `approval.denied` and answered privately
    (in `channel_id`; without one the caller shows it). A reject's `reason` is checked before anything."""
    reason = lifecycle.validate_reason(reason) if act == REJECT else ""
    try:
        await prepare_request(db, pol.roles, user_id, request_id)
    except RolesUnavailable as exc:
        await _tell(db, channel_id, user_id, exc.message)  # nothing decided, nothing audited
        raise
    except Refusal as exc:  # the clicker is not linked to an Azure identity: a denial like any other
        async with db.write() as session:
            await deny(session, act, exc, user_id=user_id, req=None, channel_id=channel_id, raw=request_id)
        raise
    async with db.write(serial=False) as session:  # the request's row is locked by lifecycle.load
        req: ChangeRequest | None = None
        try:
            req = await lifecycle.load(session, request_id, team_id)
            if lifecycle.is_expired(req, utcnow()):
                await lifecycle.expire(session, req, pol)
                refusal: Refusal = RequestExpired(f"Request #{req.id} expired at {moment(req.expires_at)}.")
            else:
                facts = await _facts(session, act, user_id, req, pol)
                return await _act(session, facts, decide(facts, pol), pol, reason)
        except Refusal as exc:
            refusal = exc
        await deny(session, act, refusal, user_id=user_id, req=req, channel_id=channel_id, raw=request_id)
    raise refusal


async def _tell(db: Database, channel_id: str | None, user_id: str, message: str) -> None:
    if channel_id:
        async with db.write() as session:
            rows = Outbox()
            rows.ephemeral(channel_id, user_id, message)
            await rows.flush(session)


async def deny(
    session: AsyncSession,
    act: str,
    refusal: Refusal,
    *,
    user_id: str,
    req: ChangeRequest | None,
    channel_id: str | None,
    raw: object,
) -> None:
    """Record a refused act on a request (`approval.denied`), and answer the person privately in the channel
    they acted in, if any."""
    data: dict[str, object] = {"act": act, "reason": refusal.code, "message": refusal.message}
    if req is None:
        data["value"] = str(raw)[:100]
    await audit.append(
        session,
        audit.Entry(
            actor=user_id,
            action="approval.denied",
            request_id=req.id if req else None,
            subscription_id=req.subscription_id if req else None,
            data=data,
        ),
    )
    if channel_id:
        rows = Outbox()
        rows.ephemeral(channel_id, user_id, refusal.message)
        await rows.flush(session)


async def approve(db: Database, pol: Policy, **click_args: object) -> Decision:
    return await click(db, pol, APPROVE, **click_args)  # type: ignore[arg-type]


async def reject(db: Database, pol: Policy, **click_args: object) -> Decision:
    return await click(db, pol, REJECT, **click_args)  # type: ignore[arg-type]


async def retry(db: Database, pol: Policy, **click_args: object) -> Decision:
    return await click(db, pol, RETRY, **click_args)  # type: ignore[arg-type]
