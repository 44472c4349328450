"""The change request's state machine: every transition, its refusals, its audit event and its outbox rows.

pending -> approved -> applying -> applied | failed;  pending -> rejected | cancelled | expired;
failed -> applying (an owner retries). Each transition is one transaction: a conditional UPDATE
on the expected status, its audit event and the outbox rows it causes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.directory import partner_id as valid_partner_id
from bot.directory import resolve_subscription, roles_for, watching_channels
from bot.errors import (
    AlreadyDecided,
    BadInput,
    NotAuthorised,
    NotOwner,
    OpenRequestExists,
    PartnerAlreadySet,
    Refusal,
    RequestExpired,
    SelfApproval,
    UnknownRequest,
    WrongTeam,
)
from bot.outbox import Outbox
from bot.policy import Policy, allowed
from bot.text import clean
from storage.db import Database
from storage.models import (
    ALL_SUBSCRIPTIONS,
    Approval,
    ChangeRequest,
    RoleAssignment,
    Subscription,
    utcnow,
)
from storage.queries import open_request

SYSTEM_ACTOR = "dpor-bot"
MAX_REASON = 500
TERMINAL = ("applied", "rejected", "cancelled", "expired")

_PAST = {
    "approved": "approved",
    "applying": "approved (being applied)",
    "applied": "approved and applied",
    "failed": "approved, but applying it failed",
    "rejected": "rejected",
    "cancelled": "cancelled",
    "expired": "expired",
}


@dataclass(frozen=True)
class Decision:
    """What a click did: the request as it now stands, and the approvals counted so far."""

    request: ChangeRequest
    approvals: int
    required: int
    decided: bool


@dataclass(frozen=True)
class ApplyOutcome:
    ok: bool
    partner_id: str | None = None
    partner_name: str | None = None
    detail: dict[str, Any] | None = None
    error: str | None = None


def _who(user_id: str | None) -> str:
    return "dpor-bot" if user_id in (None, SYSTEM_ACTOR) else f"<@{user_id}>"


def decided_sentence(req: ChangeRequest) -> str:
    state = _PAST.get(req.status, req.status)
    when = f" at {req.decided_at:%Y-%m-%d %H:%M} UTC" if req.decided_at else ""
    by = f" by {_who(req.decided_by)}" if req.decided_by and req.status != "expired" else ""
    return f"Request #{req.id} was already {state}{by}{when}."


async def _notify_targets(session: AsyncSession, policy: Policy, subscription_id: str) -> list[str]:
    watchers = await watching_channels(session, subscription_id)
    return list(dict.fromkeys([*policy.notify_channels, *watchers]))


async def _transition(
    session: AsyncSession, req: ChangeRequest, expected: str, new: str, **values: Any
) -> None:
    """UPDATE ... WHERE id = :id AND status = :expected; zero rows means someone decided first."""
    now = utcnow()
    result = await session.execute(
        update(ChangeRequest)
        .where(ChangeRequest.id == req.id, ChangeRequest.status == expected)
        .values(status=new, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        await session.refresh(req)
        raise AlreadyDecided(decided_sentence(req))
    await session.refresh(req)


def _validate_reason(reason: str) -> str:
    reason = clean(reason).strip()
    if len(reason) > MAX_REASON:
        raise BadInput(f"The reason is {len(reason)} characters long; keep it to {MAX_REASON} or fewer.")
    return reason


async def create_request(
    db: Database,
    policy: Policy,
    *,
    team_id: str,
    user_id: str,
    subscription: str,
    partner: str,
    reason: str = "",
    channel_id: str | None = None,
) -> ChangeRequest:
    """Open a request to set `partner` as the subscription's partner of record."""
    pid = valid_partner_id(partner)
    reason = _validate_reason(reason)
    try:
        async with db.write() as session:
            sub = await resolve_subscription(session, subscription)
            if not allowed("request", await roles_for(session, user_id, sub.id)):
                raise NotAuthorised(
                    f"You are not an admin or owner of subscription {sub.name} (`{sub.id}`), "
                    "so you cannot request a change to its partner. An owner can grant you the admin role."
                )
            if sub.partner_id == pid:
                raise PartnerAlreadySet(
                    f"Partner `{pid}` is already the partner of record of {sub.name}; nothing to change."
                )
            now = utcnow()
            current = await open_request(session, sub.id)
            if current is not None and _is_expired(current, now):
                # Past its TTL but not swept yet: it expires now rather than block the new request.
                await _expire(session, current, policy)
            elif current is not None:
                raise _open_exists(sub, current.id)
            req = ChangeRequest(
                team_id=team_id,
                subscription_id=sub.id,
                partner_id=pid,
                previous_partner_id=sub.partner_id,
                requester_id=user_id,
                reason=reason,
                status="pending",
                created_at=now,
                updated_at=now,
                expires_at=now + policy.request_ttl,
                card_channel=policy.approval_channel or channel_id,
            )
            session.add(req)
            await session.flush()
            await audit.append(
                session,
                audit.Entry(
                    actor=user_id,
                    action="request.created",
                    request_id=req.id,
                    subscription_id=sub.id,
                    data={
                        "partner_id": pid,
                        "previous_partner_id": sub.partner_id,
                        "reason": reason,
                        "expires_at": req.expires_at.isoformat(),
                    },
                ),
            )
            outbox = Outbox()
            if req.card_channel:
                outbox.card(req.id)
            await outbox.flush(session)
            return req
    except IntegrityError:
        # The partial unique index caught a request opened concurrently (another process).
        async with db.read() as session:
            sub = await resolve_subscription(session, subscription)
            current = await open_request(session, sub.id)
        raise _open_exists(sub, current.id if current else None) from None


def _open_exists(sub: Subscription, open_id: int | None) -> OpenRequestExists:
    return OpenRequestExists(
        f"Request #{open_id} for {sub.name} is still open; it must be decided, cancelled or expire "
        f"before a new one (`/dpor cancel {open_id}` withdraws it).",
        request_id=open_id,
    )


async def _load(session: AsyncSession, request_id: int | str, team_id: str | None) -> ChangeRequest:
    try:
        rid = int(str(request_id).strip().lstrip("#"))
    except ValueError:
        raise UnknownRequest(f"`{request_id}` is not a request number, such as `42`.") from None
    req = await session.get(ChangeRequest, rid)
    if req is None:
        raise UnknownRequest(f"There is no request #{rid}. `/dpor pending` lists the open ones.")
    if team_id is not None and req.team_id != team_id:
        raise WrongTeam("That request belongs to another Slack workspace.")
    return req


async def _sub(session: AsyncSession, req: ChangeRequest) -> Subscription:
    sub = await session.get(Subscription, req.subscription_id)
    assert sub is not None
    return sub


async def _expire(session: AsyncSession, req: ChangeRequest, policy: Policy) -> None:
    await _transition(session, req, "pending", "expired", decided_at=utcnow())
    await audit.append(
        session,
        audit.Entry(
            actor=SYSTEM_ACTOR,
            action="request.expired",
            request_id=req.id,
            subscription_id=req.subscription_id,
            data={"expires_at": req.expires_at.isoformat()},
        ),
    )
    outbox = Outbox()
    if req.card_channel:
        outbox.card(req.id)
    outbox.dm(req.requester_id, req.id, "expired")
    await outbox.flush(session)


def _is_expired(req: ChangeRequest, now: datetime) -> bool:
    return req.status == "pending" and req.expires_at <= now


ClickStep = Callable[[AsyncSession, ChangeRequest], Awaitable[Decision]]


async def _click(
    db: Database,
    policy: Policy,
    act: str,
    *,
    request_id: int | str,
    team_id: str,
    user_id: str,
    channel_id: str | None,
    step: ClickStep,
) -> Decision:
    """Run a button click's decision; a refusal is audited as `approval.denied` and answered privately."""
    req_id: int | None = None
    sub_id: str | None = None
    expired: ChangeRequest | None = None
    try:
        async with db.write() as session:
            req = await _load(session, request_id, team_id)
            req_id, sub_id = req.id, req.subscription_id
            if _is_expired(req, utcnow()):
                await _expire(session, req, policy)
                expired = req
            else:
                return await step(session, req)
        assert expired is not None
        raise RequestExpired(f"Request #{expired.id} expired at {expired.expires_at:%Y-%m-%d %H:%M} UTC.")
    except Refusal as refusal:
        await _deny(
            db,
            act,
            refusal,
            user_id=user_id,
            request_id=req_id,
            subscription_id=sub_id,
            channel_id=channel_id,
            raw=request_id,
        )
        raise


async def _deny(
    db: Database,
    act: str,
    refusal: Refusal,
    *,
    user_id: str,
    request_id: int | None,
    subscription_id: str | None,
    channel_id: str | None,
    raw: object,
) -> None:
    async with db.write() as session:
        data: dict[str, Any] = {"act": act, "reason": refusal.code, "message": refusal.message}
        if request_id is None:
            data["value"] = str(raw)[:100]
        await audit.append(
            session,
            audit.Entry(
                actor=user_id,
                action="approval.denied",
                request_id=request_id,
                subscription_id=subscription_id,
                data=data,
            ),
        )
        if channel_id:
            outbox = Outbox()
            outbox.ephemeral(channel_id, user_id, refusal.message)
            await outbox.flush(session)


async def _require_owner(session: AsyncSession, req: ChangeRequest, user_id: str, act: str) -> None:
    if not allowed(act, await roles_for(session, user_id, req.subscription_id)):
        sub = await _sub(session, req)
        verb = {"approve": "approve", "reject": "reject", "retry": "retry"}[act]
        raise NotOwner(
            f"Only an owner of subscription {sub.name} (`{sub.id}`) can {verb} this request, "
            "and you do not hold the owner role on it now."
        )


async def _approval_count(session: AsyncSession, req: ChangeRequest) -> int:
    """Approvals by people who are owners of the subscription now: a revoked owner's no longer counts."""
    still_owner = exists().where(
        RoleAssignment.user_id == Approval.approver_id,
        RoleAssignment.role == "owner",
        RoleAssignment.scope.in_((req.subscription_id, ALL_SUBSCRIPTIONS)),
    )
    return (
        await session.scalar(
            select(func.count())
            .select_from(Approval)
            .where(Approval.request_id == req.id, Approval.decision == "approve", still_owner)
        )
        or 0
    )


async def approve(
    db: Database,
    policy: Policy,
    *,
    request_id: int | str,
    team_id: str,
    user_id: str,
    channel_id: str | None = None,
) -> Decision:
    async def step(session: AsyncSession, req: ChangeRequest) -> Decision:
        if req.status != "pending":
            raise AlreadyDecided(decided_sentence(req))
        await _require_owner(session, req, user_id, "approve")
        if user_id == req.requester_id and not policy.allow_self_approval:
            raise SelfApproval("You asked for this change, so another owner must approve it.")
        mine = await session.scalar(
            select(Approval.decision).where(Approval.request_id == req.id, Approval.approver_id == user_id)
        )
        if mine is not None:
            count = await _approval_count(session, req)
            raise AlreadyDecided(
                f"You already approved request #{req.id}; it has {count} of "
                f"{policy.required_approvals} approvals and needs another owner."
            )
        session.add(Approval(request_id=req.id, approver_id=user_id, decision="approve"))
        await session.flush()
        count = await _approval_count(session, req)
        final = count >= policy.required_approvals
        now = utcnow()
        if final:
            await _transition(session, req, "pending", "approved", decided_by=user_id, decided_at=now)
        else:
            await _transition(session, req, "pending", "pending")
        await audit.append(
            session,
            audit.Entry(
                actor=user_id,
                action="request.approved",
                request_id=req.id,
                subscription_id=req.subscription_id,
                data={"approvals": count, "required": policy.required_approvals, "final": final},
            ),
        )
        outbox = Outbox()
        if req.card_channel:
            outbox.card(req.id)
        if final:
            outbox.apply(req.id)
            outbox.dm(req.requester_id, req.id, "approved")
        await outbox.flush(session)
        return Decision(req, count, policy.required_approvals, decided=final)

    return await _click(
        db,
        policy,
        "approve",
        request_id=request_id,
        team_id=team_id,
        user_id=user_id,
        channel_id=channel_id,
        step=step,
    )


async def reject(
    db: Database,
    policy: Policy,
    *,
    request_id: int | str,
    team_id: str,
    user_id: str,
    channel_id: str | None = None,
) -> Decision:
    async def step(session: AsyncSession, req: ChangeRequest) -> Decision:
        if req.status != "pending":
            raise AlreadyDecided(decided_sentence(req))
        await _require_owner(session, req, user_id, "reject")
        if await session.scalar(
            select(Approval.id).where(Approval.request_id == req.id, Approval.approver_id == user_id)
        ):
            raise AlreadyDecided(f"You already approved request #{req.id}; you cannot also reject it.")
        session.add(Approval(request_id=req.id, approver_id=user_id, decision="reject"))
        await _transition(session, req, "pending", "rejected", decided_by=user_id, decided_at=utcnow())
        await audit.append(
            session,
            audit.Entry(
                actor=user_id,
                action="request.rejected",
                request_id=req.id,
                subscription_id=req.subscription_id,
            ),
        )
        outbox = Outbox()
        if req.card_channel:
            outbox.card(req.id)
        outbox.dm(req.requester_id, req.id, "rejected")
        outbox.notify(await _notify_targets(session, policy, req.subscription_id), req.id, "rejected")
        await outbox.flush(session)
        return Decision(req, await _approval_count(session, req), policy.required_approvals, decided=True)

    return await _click(
        db,
        policy,
        "reject",
        request_id=request_id,
        team_id=team_id,
        user_id=user_id,
        channel_id=channel_id,
        step=step,
    )


async def retry(
    db: Database,
    policy: Policy,
    *,
    request_id: int | str,
    team_id: str,
    user_id: str,
    channel_id: str | None = None,
) -> Decision:
    """An owner asks to apply a failed request again."""

    async def step(session: AsyncSession, req: ChangeRequest) -> Decision:
        if req.status != "failed":
            raise AlreadyDecided(
                f"Request #{req.id} is {req.status}, not failed, so there is nothing to retry."
            )
        await _require_owner(session, req, user_id, "retry")
        # A failed request is not open, so a newer one may be; applying this one would make two.
        newer = await open_request(session, req.subscription_id)
        if newer is not None:
            sub = await _sub(session, req)
            raise OpenRequestExists(
                f"Request #{newer.id} for {sub.name} is open now, so #{req.id} cannot be retried; "
                f"decide or cancel #{newer.id} first.",
                request_id=newer.id,
            )
        # A retry gets the whole budget of attempts again, not what was left of the failed one.
        await _transition(session, req, "failed", "applying", error=None, apply_attempts=0)
        await audit.append(
            session,
            audit.Entry(
                actor=user_id,
                action="apply.started",
                request_id=req.id,
                subscription_id=req.subscription_id,
                data={"retry": True},
            ),
        )
        outbox = Outbox()
        if req.card_channel:
            outbox.card(req.id)
        outbox.apply(req.id)
        await outbox.flush(session)
        return Decision(req, await _approval_count(session, req), policy.required_approvals, decided=True)

    return await _click(
        db,
        policy,
        "retry",
        request_id=request_id,
        team_id=team_id,
        user_id=user_id,
        channel_id=channel_id,
        step=step,
    )


async def cancel(
    db: Database, policy: Policy, *, request_id: int | str, team_id: str | None, user_id: str
) -> ChangeRequest:
    """The requester (or an owner) withdraws a pending request. Refusals write nothing."""
    async with db.write() as session:
        req = await _load(session, request_id, team_id)
        if req.status != "pending":
            raise AlreadyDecided(decided_sentence(req))
        if user_id != req.requester_id and not allowed(
            "cancel", await roles_for(session, user_id, req.subscription_id)
        ):
            raise NotAuthorised(
                f"Only the requester (<@{req.requester_id}>) or an owner of the subscription "
                f"can cancel request #{req.id}."
            )
        await _transition(session, req, "pending", "cancelled", decided_by=user_id, decided_at=utcnow())
        await audit.append(
            session,
            audit.Entry(
                actor=user_id,
                action="request.cancelled",
                request_id=req.id,
                subscription_id=req.subscription_id,
            ),
        )
        outbox = Outbox()
        if req.card_channel:
            outbox.card(req.id)
        if user_id != req.requester_id:
            outbox.dm(req.requester_id, req.id, "cancelled")
        await outbox.flush(session)
        return req


async def expire_due(
    db: Database, policy: Policy, *, now: datetime | None = None, limit: int = 100
) -> list[int]:
    """Expire pending requests past their TTL, each in its own transaction; returns their ids."""
    now = now or utcnow()
    async with db.read() as session:
        ids = list(
            (
                await session.scalars(
                    select(ChangeRequest.id)
                    .where(ChangeRequest.status == "pending", ChangeRequest.expires_at <= now)
                    .order_by(ChangeRequest.expires_at)
                    .limit(limit)
                )
            ).all()
        )
    expired = []
    for rid in ids:
        try:
            async with db.write() as session:
                req = await session.get(ChangeRequest, rid)
                if req is None or not _is_expired(req, now):
                    continue
                await _expire(session, req, policy)
                expired.append(rid)
        except AlreadyDecided:
            continue
    return expired


async def remind_due(db: Database, remind_after: timedelta, *, now: datetime | None = None) -> list[int]:
    """Queue one reminder for each pending request waiting longer than `remind_after`; returns their ids.

    `reminded_at` is set by a conditional UPDATE, so several processes sweeping at once remind once.
    """
    now = now or utcnow()
    async with db.write(chain=False) as session:
        reminded = list(
            (
                await session.scalars(
                    update(ChangeRequest)
                    .where(
                        ChangeRequest.status == "pending",
                        ChangeRequest.reminded_at.is_(None),
                        ChangeRequest.created_at <= now - remind_after,
                        ChangeRequest.expires_at > now,
                        ChangeRequest.card_channel.is_not(None),
                    )
                    .values(reminded_at=now)
                    .returning(ChangeRequest.id)
                )
            ).all()
        )
        outbox = Outbox()
        for request_id in sorted(reminded):
            outbox.remind(request_id)
        await outbox.flush(session)
    return reminded


async def start_apply(db: Database, request_id: int) -> ChangeRequest | None:
    """Move an approved request to applying (or pick up one left applying); None if there is nothing to do."""
    async with db.write() as session:
        req = await session.get(ChangeRequest, request_id)
        if req is None or req.status not in ("approved", "applying"):
            return None
        attempts = req.apply_attempts + 1
        if req.status == "approved":
            await _transition(session, req, "approved", "applying", apply_attempts=attempts)
            await audit.append(
                session,
                audit.Entry(
                    actor=SYSTEM_ACTOR,
                    action="apply.started",
                    request_id=req.id,
                    subscription_id=req.subscription_id,
                    data={"partner_id": req.partner_id},
                ),
            )
            outbox = Outbox()
            if req.card_channel:
                outbox.card(req.id)
            await outbox.flush(session)
        else:
            await _transition(session, req, "applying", "applying", apply_attempts=attempts)
        return req


async def finish_apply(db: Database, policy: Policy, request_id: int, outcome: ApplyOutcome) -> ChangeRequest:
    async with db.write() as session:
        req = await session.get(ChangeRequest, request_id)
        if req is None:
            raise UnknownRequest(f"There is no request #{request_id}.")
        now = utcnow()
        result = {
            "partner_id": outcome.partner_id,
            "partner_name": outcome.partner_name,
            **(outcome.detail or {}),
        }
        if outcome.ok:
            # A provider that does not read the partner back applied the one requested.
            result["partner_id"] = outcome.partner_id or req.partner_id
            await _transition(session, req, "applying", "applied", applied_at=now, result=result, error=None)
            await session.execute(
                update(Subscription)
                .where(Subscription.id == req.subscription_id)
                .values(partner_id=result["partner_id"], partner_set_at=now)
            )
            action, event = "apply.succeeded", "applied"
            data = {"partner_id": req.partner_id, "previous_partner_id": req.previous_partner_id, **result}
        else:
            await _transition(session, req, "applying", "failed", error=outcome.error, result=result)
            action, event = "apply.failed", "failed"
            data = {"partner_id": req.partner_id, "error": outcome.error}
        await audit.append(
            session,
            audit.Entry(
                actor=SYSTEM_ACTOR,
                action=action,
                request_id=req.id,
                subscription_id=req.subscription_id,
                data=data,
            ),
        )
        outbox = Outbox()
        if req.card_channel:
            outbox.card(req.id)
        outbox.dm(req.requester_id, req.id, event)
        outbox.notify(await _notify_targets(session, policy, req.subscription_id), req.id, event)
        await outbox.flush(session)
        return req
