"""The change request's state machine: opening, cancelling, expiring, reminding, and the one way to move.

pending -> approved -> applying -> applied | failed;  pending -> rejected | cancelled | expired;
failed -> applying (an owner retries). Every transition goes through `record`: one conditional UPDATE
on the expected status, its audit event and the outbox rows it causes, in the caller's transaction.
Clicks (approve, reject, retry) are decided in `bot.clicks`; applying is `bot.apply`.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit, policy, reach
from bot.approvers import eligible_approvers
from bot.directory import partner_id as valid_partner_id
from bot.directory import resolve_subscription
from bot.errors import (
    SYSTEM_ACTOR,
    AlreadyDecided,
    BadInput,
    NotAuthorised,
    OpenRequestExists,
    PartnerAlreadySet,
    RequestExpired,
    UnknownRequest,
    WrongTeam,
    moment,
    person,
)
from bot.metrics import Metrics
from bot.outbox import Outbox
from bot.owners import too_few_approvers
from bot.policy import Policy
from bot.roles import prepare_request
from bot.text import clean
from storage import requests
from storage.db import Database
from storage.directory import watching_channels
from storage.models import ChangeRequest, RequestStatus, Subscription, utcnow

log = logging.getLogger("dpor.lifecycle")

MAX_REASON = 500
# A request number as people and buttons write it: ASCII digits only, within the id column's range.
_REQUEST_NUMBER = re.compile(r"#?([0-9]{1,10})", re.ASCII)
MAX_REQUEST_ID = 2**31 - 1

_PAST = {
    RequestStatus.APPROVED: "approved",
    RequestStatus.APPLYING: "approved (being applied)",
    RequestStatus.APPLIED: "approved and applied",
    RequestStatus.REJECTED: "rejected",
    RequestStatus.CANCELLED: "cancelled",
    RequestStatus.EXPIRED: "expired",
}


def decided_sentence(req: ChangeRequest) -> str:
    state = _PAST.get(RequestStatus(req.status), req.status)
    when = f" at {moment(req.decided_at)}" if req.decided_at else ""
    by = f" by {person(req.decided_by)}" if req.decided_by and req.status != RequestStatus.EXPIRED else ""
    if req.status == RequestStatus.FAILED:
        # Who and when are the approval's: the provider failed the apply, not the person who approved it.
        return (
            f"Request #{req.id} was already approved{by}{when}, but applying it failed; its card says "
            "until when an owner can Retry it."
        )
    return f"Request #{req.id} was already {state}{by}{when}."


def effects(req: ChangeRequest) -> Outbox:
    """The rows every transition of `req` causes: its card, updated (when it has a channel)."""
    rows = Outbox()
    if req.card_channel:
        rows.card(req.id)
    return rows


async def notify_targets(session: AsyncSession, pol: Policy, subscription_id: str) -> list[str]:
    """The channels told of a subscription's changes: DPOR_NOTIFY_CHANNELS and those that subscribed."""
    watchers = await watching_channels(session, subscription_id)
    return list(dict.fromkeys([*pol.notify_channels, *watchers]))


async def record(
    session: AsyncSession,
    req: ChangeRequest,
    expected: str,
    new: str,
    event: audit.Entry | None,
    rows: Outbox,
    **values: Any,
) -> None:
    """One transition: UPDATE ... WHERE status = :expected, its audit event and its outbox rows.

    Zero rows updated means someone decided first: AlreadyDecided says who and what.
    """
    moved = await requests.move(session, req, expected, new, **values)
    if not moved:
        raise AlreadyDecided(decided_sentence(req))
    if event is not None:
        await audit.append(session, event)
    await rows.flush(session)


def event(req: ChangeRequest, actor: str, action: str, **data: Any) -> audit.Entry:
    return audit.Entry(
        actor=actor, action=action, request_id=req.id, subscription_id=req.subscription_id, data=data or None
    )


def request_number(raw: int | str) -> int:
    """Read a request number strictly; anything else is no request at all."""
    text = str(raw).strip()
    match = _REQUEST_NUMBER.fullmatch(text)
    if match is None:
        raise UnknownRequest(f"`{text[:40]}` is not a request number, such as `42`.")
    number = int(match.group(1))
    if not 1 <= number <= MAX_REQUEST_ID:
        raise UnknownRequest(f"There is no request #{number}. `/dpor pending` lists the open ones.")
    return number


async def load(
    session: AsyncSession, request_id: int | str, team_id: str | None, *, lock: bool = True
) -> ChangeRequest:
    """The request by number, checked against the workspace; `lock`: its row locked until the transaction
    ends, so two clicks on one request decide one after the other (PostgreSQL, several processes)."""
    rid = request_number(request_id)
    req = await requests.get(session, rid, lock=lock)
    if req is None:
        raise UnknownRequest(f"There is no request #{rid}. `/dpor pending` lists the open ones.")
    if team_id is not None and req.team_id != team_id:
        raise WrongTeam("That request belongs to another Slack workspace.")
    return req


async def subscription_of(session: AsyncSession, req: ChangeRequest) -> Subscription:
    sub = await requests.subscription(session, req.subscription_id)
    assert sub is not None  # a foreign key
    return sub


def validate_reason(reason: str) -> str:
    reason = clean(reason).strip()
    if len(reason) > MAX_REASON:
        raise BadInput(f"The reason is {len(reason)} characters long; keep it to {MAX_REASON} or fewer.")
    return reason


def is_expired(req: ChangeRequest, now: datetime) -> bool:
    return req.status == RequestStatus.PENDING and req.expires_at <= now


async def create_request(
    db: Database,
    pol: Policy,
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
    reason = validate_reason(reason)
    # Azure as the role source: the requester's roles and the owners' (too few approvers?) fetched first.
    await pol.roles.prepare(user_id, [subscription], everyone=True)
    try:
        # Not serial: a second open request for the subscription is refused by its unique index.
        async with db.write(serial=False) as session:
            sub = await resolve_subscription(session, subscription)
            await policy.check(
                session,
                "request",
                user_id,
                sub,
                roles=pol.roles,
                refusal=f"You are not an admin or owner of subscription {sub.name} (`{sub.id}`), "
                "so you cannot request a change to its partner. An owner can grant you the admin role.",
            )
            if sub.partner_id == pid:
                raise PartnerAlreadySet(
                    f"Partner `{pid}` is already the partner of record of {sub.name}; nothing to change."
                )
            eligible = len(await eligible_approvers(session, pol, sub.id, user_id))
            if eligible < pol.required_approvals:
                raise too_few_approvers(
                    sub, pol.required_approvals, eligible, self_approval=pol.allow_self_approval
                )
            now = utcnow()
            current = await requests.open_for(session, sub.id)
            if current is not None and is_expired(current, now):
                # Past its TTL but not swept yet: it expires now rather than block the new request.
                await expire(session, current, pol)
            elif current is not None:
                raise open_exists(sub, current.id)
            req = await requests.insert(
                session,
                team_id=team_id,
                subscription_id=sub.id,
                partner_id=pid,
                previous_partner_id=sub.partner_id,
                requester_id=user_id,
                reason=reason,
                status=RequestStatus.PENDING,
                created_at=now,
                updated_at=now,
                expires_at=now + pol.request_ttl,
                card_channel=pol.approval_channel or channel_id,
            )
            facts = {"partner_id": pid, "previous_partner_id": sub.partner_id, "reason": reason}
            entry = event(req, user_id, "request.created", **facts, expires_at=req.expires_at.isoformat())
            await audit.append(session, entry)
            rows = effects(req)
            req.approvers_reach = await reach.ask_approvers(session, pol, req, rows)
            await rows.flush(session)
            return req
    except IntegrityError:
        # The partial unique index caught a request opened concurrently (another process).
        async with db.read() as session:
            sub = await resolve_subscription(session, subscription)
            current = await requests.open_for(session, sub.id)
        raise open_exists(sub, current.id if current else None) from None


def open_exists(sub: Subscription, open_id: int | None) -> OpenRequestExists:
    return OpenRequestExists(
        f"Request #{open_id} for {sub.name} is still open; it must be decided, cancelled or expire "
        f"before a new one (`/dpor cancel {open_id}` withdraws it).",
        request_id=open_id,
    )


async def announce(
    session: AsyncSession, pol: Policy | None, req: ChangeRequest, rows: Outbox, news: str
) -> None:
    """A step of `req` told in its card's thread and to the channels that watch its subscription (without
    a policy, as in a bare sweep: the watching channels only)."""
    rows.thread(req.card_channel, req.id, news)
    rows.notify(await notify_targets(session, pol or Policy(), req.subscription_id), req.id, news)


async def _end(
    session: AsyncSession,
    pol: Policy | None,
    req: ChangeRequest,
    to: RequestStatus,
    entry: audit.Entry,
    *,
    news: str,
    dm: str | None,
    decided_by: str | None = None,
) -> None:
    """A pending request ends undecided by its owners (expired, withdrawn, cancelled), in the caller's
    transaction: the requester's DM (`dm`), the thread and the watching channels (`news`), its event."""
    rows = effects(req)
    if dm:
        rows.dm(req.requester_id, req.id, dm)
    await announce(session, pol, req, rows, news)
    by = {"decided_by": decided_by} if decided_by else {}
    await record(session, req, RequestStatus.PENDING, to, entry, rows, decided_at=utcnow(), **by)


async def expire(session: AsyncSession, req: ChangeRequest, pol: Policy | None = None) -> None:
    entry = event(req, SYSTEM_ACTOR, "request.expired", expires_at=req.expires_at.isoformat())
    await _end(session, pol, req, RequestStatus.EXPIRED, entry, news="expired", dm="expired")


async def withdraw(session: AsyncSession, req: ChangeRequest, why: str, pol: Policy | None = None) -> None:
    """The bot cancels a pending request nobody may carry on with (its requester lost the right to ask)."""
    entry, cancelled = event(req, SYSTEM_ACTOR, "request.cancelled", reason=why), RequestStatus.CANCELLED
    await _end(session, pol, req, cancelled, entry, news="voided", dm="withdrawn", decided_by=SYSTEM_ACTOR)


async def cancel(
    db: Database,
    pol: Policy,
    *,
    request_id: int | str,
    team_id: str | None,
    user_id: str,
    reason: str = "",
    operator: bool = False,
) -> ChangeRequest:
    """The requester (or an owner) withdraws a pending request. Refusals write nothing, but a request past
    its TTL expires (whoever asks), as it would at the next sweep.

    `operator`: an operator at the CLI (`user_id` is `cli:<login>`), who holds the database and so needs
    no role, but must give a reason. A reason, when given, is recorded in the audit event.
    """
    reason = validate_reason(reason)
    if operator and not reason:
        raise BadInput("Say why the request is cancelled: the reason is recorded in the audit log.")
    if not operator:
        await prepare_request(db, pol.roles, user_id, request_id)
    async with db.write() as session:
        req = await load(session, request_id, team_id)
        if is_expired(req, utcnow()):
            # Past its TTL but not swept yet: it expires now, as at a click on its card, rather than be
            # recorded as cancelled by someone after it had ended; the answer says so.
            await expire(session, req, pol)
            ended = RequestExpired(
                f"Request #{req.id} expired at {moment(req.expires_at)}; there is nothing to cancel."
            )
        else:
            return await _cancel_pending(session, pol, req, user_id, reason, operator)
    raise ended


async def _cancel_pending(
    session: AsyncSession, pol: Policy, req: ChangeRequest, user_id: str, reason: str, operator: bool
) -> ChangeRequest:
    """cancel() inside its transaction, on a request whose TTL has not passed."""
    if req.status != RequestStatus.PENDING:
        raise AlreadyDecided(decided_sentence(req))
    if user_id != req.requester_id and not operator:
        await policy.check(
            session,
            "cancel",
            user_id,
            await subscription_of(session, req),
            roles=pol.roles,
            refusal=f"Only the requester ({person(req.requester_id)}) or an owner of the subscription "
            f"can cancel request #{req.id}.",
            error=NotAuthorised,
        )
    entry = event(req, user_id, "request.cancelled", **({"reason": reason} if reason else {}))
    dm = "cancelled" if user_id != req.requester_id else None
    by = user_id[:32]  # the column's width; the audit event keeps the whole actor
    await _end(session, pol, req, RequestStatus.CANCELLED, entry, news="cancelled", dm=dm, decided_by=by)
    return req


async def expire_due(
    db: Database, *, now: datetime | None = None, limit: int = 100, pol: Policy | None = None
) -> list[int]:
    """Expire pending requests past their TTL, each in its own transaction; returns their ids."""
    now = now or utcnow()
    async with db.read() as session:
        ids = await requests.due_to_expire(session, now, limit)
    expired = []
    for rid in ids:
        try:
            async with db.write() as session:
                req = await requests.get(session, rid)
                if req is None or not is_expired(req, now):
                    continue
                await expire(session, req, pol)
                expired.append(rid)
        except AlreadyDecided:
            continue
    return expired


async def remind_due(db: Database, remind_after: timedelta, *, now: datetime | None = None) -> list[int]:
    """Queue one reminder for each pending request waiting longer than `remind_after` (and, every
    `remind_after`, for each approved one waiting for an owner's attestation of the portal step); returns
    their ids."""
    now = now or utcnow()
    async with db.write(serial=False) as session:
        reminded = await requests.mark_reminded(session, now, now - remind_after)
        # Approved changes still waiting for an owner to attest the Azure portal step (the portal provider).
        reminded += await requests.mark_attestation_reminded(session, now, now - remind_after)
        rows = Outbox()
        for request_id in reminded:
            rows.remind(request_id)
        await rows.flush(session)
    return reminded


async def card_unposted(session: AsyncSession, request_id: int) -> None:
    """Slack refused to post a request's card, so nobody can approve it: its requester is told."""
    req = await requests.get(session, request_id)
    if req is not None and req.card_ts is None and req.status == RequestStatus.PENDING:
        rows = Outbox()
        rows.dm(req.requester_id, req.id, "unposted")
        await rows.flush(session)


async def sweep(
    db: Database, remind_after: timedelta | None, *, metrics: Metrics | None = None, pol: Policy | None = None
) -> None:
    """Expire requests past their TTL and queue due reminders; every process may sweep at once."""
    expired = await expire_due(db, pol=pol)
    if metrics is not None:
        metrics.expiries.inc(len(expired))
    reminded = await remind_due(db, remind_after) if remind_after else []
    if expired or reminded:
        log.info("expired requests %s; reminders queued for requests %s", expired, reminded)
