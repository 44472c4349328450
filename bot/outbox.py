"""The outbox: side effects (Slack messages, provider applies) written in the same transaction as the state.

A row names a fact ("request 42's card", "tell U1 that request 42 was rejected"), never Slack's wording:
the deliverer renders it at delivery time from the database, so a message always shows the newest state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot import audit
from bot.errors import Refusal
from storage import outbox as table
from storage import requests
from storage.db import Database
from storage.models import OutboxMessage, RequestStatus

# Kinds of rows, and what delivering each does:
CARD = table.CARD  # post the request's approval card, or update it in place
DM = "dm"  # tell a person (the requester) what happened to their request
NOTIFY = "notify"  # a change notification in a channel
EPHEMERAL = "ephemeral"  # an answer only one person sees (e.g. a refused click)
APPLY = "apply"  # apply an approved change through the partner provider
REMIND = "remind"  # remind the approval channel, in the card's thread, that a request still waits
NOTICE = "notice"  # a message in a channel about no request (partner drift found by reconcile)
CHECKPOINT = "checkpoint"  # publish the audit chain's head (position, hash, time) in DPOR_AUDIT_CHANNEL
ASK = "ask"  # DM an owner who can approve a new request: its summary and a link to its card
THREAD = "thread"  # one step of a request (approval k of N, applied, failed, ...) in its card's thread
KINDS = (CARD, DM, NOTIFY, EPHEMERAL, APPLY, NOTICE, REMIND, CHECKPOINT, ASK, THREAD)

AfterCommit = Callable[[], None]
Recorder = Callable[[AsyncSession], Awaitable[AfterCommit | None]]
"""What a delivery writes in the transaction that records its outcome (a card's ts, covered rows, an
apply's result); it may return what to do once that transaction has committed (log the checkpoint taken)."""


class Undeliverable(Exception):
    """Delivery failed; retry after `retry_after` seconds unless `permanent`.

    `rate_limited` (Slack's 429) does not count as an attempt; `channel` is the channel Slack limited.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        retry_after: float | None = None,
        rate_limited: bool = False,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after = retry_after
        self.rate_limited = rate_limited
        self.channel = channel


class Outbox:
    """Collects the rows one transaction causes and writes them with a single INSERT."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, key: str, **payload: Any) -> None:
        assert kind in KINDS, kind
        self.rows.append({"kind": kind, "key": key, "payload": payload})

    def card(self, request_id: int) -> None:
        self.add(CARD, f"card:{request_id}", request_id=request_id)

    def dm(self, user_id: str, request_id: int, event: str) -> None:
        self.add(DM, f"dm:{user_id}", user_id=user_id, request_id=request_id, event=event)

    def notify(self, channels: Sequence[str], request_id: int, event: str) -> None:
        for channel in channels:
            self.add(NOTIFY, f"channel:{channel}", channel=channel, request_id=request_id, event=event)

    def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        self.add(EPHEMERAL, f"ephemeral:{user_id}", channel=channel, user_id=user_id, text=text)

    def drift(self, channels: Sequence[str], facts: dict[str, Any]) -> None:
        for channel in channels:
            self.add(NOTICE, f"channel:{channel}", channel=channel, topic="drift", facts=facts)

    def role_change(self, channels: Sequence[str], facts: dict[str, Any]) -> None:
        """A role granted or revoked, told to the channels watching its scope (the facts as they were)."""
        for channel in channels:
            self.add(NOTICE, f"channel:{channel}", channel=channel, topic="role", facts=facts)

    def checkpoint(self, channel: str, seq: int, hash_: str, at: str) -> None:
        self.add(CHECKPOINT, f"channel:{channel}", channel=channel, seq=seq, hash=hash_, at=at)

    def apply(self, request_id: int) -> None:
        self.add(APPLY, f"apply:{request_id}", request_id=request_id)

    def remind(self, request_id: int) -> None:
        # The card's key: the reminder goes into the card's thread, so it waits for the card's post.
        self.add(REMIND, f"card:{request_id}", request_id=request_id)

    def ask(self, user_ids: Sequence[str], request_id: int) -> None:
        # The card's key: the DM links to the card, so it waits for the card's post.
        for user_id in user_ids:
            self.add(ASK, f"card:{request_id}", user_id=user_id, request_id=request_id)

    def thread(self, channel: str | None, request_id: int, event: str, **facts: Any) -> None:
        """A step in the card's thread (none when the request has no card channel); `facts` are what the
        step was at the time (who, approval k of N, the error), since the request moves on."""
        if channel:
            key = f"card:{request_id}"
            self.add(THREAD, key, channel=channel, request_id=request_id, event=event, **facts)

    async def flush(self, session: AsyncSession) -> None:
        await table.insert_rows(session, self.rows)
        self.rows = []


def card_delivered(row: OutboxMessage, posted: tuple[str, str] | None, covered: int | None) -> Recorder:
    """Record a card delivery: where Slack posted it (the first time), and the later rows it covered."""

    async def record(session: AsyncSession) -> None:
        if posted is not None:
            await requests.record_card(session, row.payload["request_id"], *posted)
        if covered is not None and covered > row.id:
            await table.cover(session, row.key, CARD, row.id, covered)

    return record


# What operators see and do (`dpor-bot outbox list|retry`): rows not yet delivered, and dead rows requeued.


async def undelivered(db: Database, *, dead_only: bool = False) -> list[OutboxMessage]:
    """Rows still waiting for delivery and rows given up on (dead), oldest first."""
    statuses = (table.DEAD,) if dead_only else (table.PENDING, table.DEAD)
    async with db.read() as session:
        return await table.undelivered(session, statuses)


async def _dead(session: AsyncSession, ids: Sequence[int] | None, done: str) -> list[int]:
    """These rows (every dead row when `ids` is None), each checked dead: refuses, writing nothing, when an
    id names no row or a row that is not dead (`done`: what is done to dead rows, for the refusal)."""
    found = await table.statuses_of(session, ids)
    for row_id in ids or ():
        if row_id not in found:
            raise Refusal(f"there is no outbox row {row_id}; `dpor-bot outbox list` shows them")
        if found[row_id] != table.DEAD:
            raise Refusal(f"outbox row {row_id} is {found[row_id]}, not dead; only dead rows are {done}")
    return list(found)


async def discard(db: Database, ids: Sequence[int] | None, *, actor: str) -> list[int]:
    """Set dead rows (these ids, or every dead row when `ids` is None) aside for good: a message that can
    never be delivered (its card deleted, its person deactivated, its channel gone) would otherwise keep
    the dead-rows alert firing. Each is audited (`outbox.discarded`: the row, its kind and key, its last
    error)."""
    async with db.write(serial=False) as session:
        rows = await table.discard(session, await _dead(session, ids, "discarded"))
        for row in rows:  # raising rolls the transaction back: nothing discarded
            await _refuse_an_open_apply(session, row)
        await audit.append_many(session, [_discarded(row, actor) for row in rows])
        return [row.id for row in rows]


async def _refuse_an_open_apply(session: AsyncSession, row: OutboxMessage) -> None:
    """A dead apply row beside a request still approved or applying (what its death records could not be
    written): only the row can end that request, which blocks its subscription meanwhile. Discarded, the
    request would stay open for good with no command left to finish it; `outbox retry` applies it again."""
    if row.kind != APPLY:
        return
    req = await requests.get(session, row.payload["request_id"])
    if req is not None and req.status in (RequestStatus.APPROVED, RequestStatus.APPLYING):
        raise Refusal(
            f"outbox row {row.id} applies request #{req.id}, which is still {req.status}: discarded, it "
            f"would keep its subscription blocked for good; `dpor-bot outbox retry {row.id}` tries the apply "
            "again"
        )


def _discarded(row: OutboxMessage, actor: str) -> audit.Entry:
    request_id = row.payload.get("request_id") if isinstance(row.payload, dict) else None
    return audit.Entry(
        actor=actor,
        action="outbox.discarded",
        request_id=request_id if isinstance(request_id, int) else None,
        data={"row": row.id, "kind": row.kind, "key": row.key, "last_error": (row.last_error or "")[:500]},
    )


async def requeue(db: Database, ids: Sequence[int] | None = None) -> list[int]:
    """Give dead rows (these ids, or every dead row when `ids` is None) a fresh set of attempts, due now."""
    async with db.write(serial=False) as session:
        found = await _dead(session, ids, "retried")
        if found:
            await table.revive(session, found)
        return found
