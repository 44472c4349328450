"""The outbox: side effects (Slack calls, provider calls) written in the same transaction as the state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.errors import Refusal
from storage.db import Database
from storage.models import OutboxMessage, utcnow

# Kinds of rows, and what the worker does with each:
CARD = "card"  # post the request's approval card, or update it in place (rendered from the database)
DM = "dm"  # tell a person (the requester) what happened to their request
NOTIFY = "notify"  # a change notification in a channel
EPHEMERAL = "ephemeral"  # an answer only one person sees (e.g. a refused click)
APPLY = "apply"  # apply an approved change through the partner provider
REMIND = "remind"  # remind the approval channel, in the card's thread, that a request still waits
NOTICE = "notice"  # a message in a channel about no request (e.g. partner drift found by reconcile)
KINDS = (CARD, DM, NOTIFY, EPHEMERAL, APPLY, NOTICE, REMIND)


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

    def notify(self, channels: list[str], request_id: int, event: str) -> None:
        for channel in channels:
            self.add(NOTIFY, f"channel:{channel}", channel=channel, request_id=request_id, event=event)

    def ephemeral(self, channel: str, user_id: str, text: str) -> None:
        self.add(EPHEMERAL, f"ephemeral:{user_id}", channel=channel, user_id=user_id, text=text)

    def notice(self, channels: list[str], text: str) -> None:
        for channel in channels:
            self.add(NOTICE, f"channel:{channel}", channel=channel, text=text)

    def apply(self, request_id: int) -> None:
        self.add(APPLY, f"apply:{request_id}", request_id=request_id)

    def remind(self, request_id: int) -> None:
        # The card's key: the reminder goes into the card's thread, so it waits for the card's post.
        self.add(REMIND, f"card:{request_id}", request_id=request_id)

    async def flush(self, session: AsyncSession) -> None:
        if self.rows:
            await session.execute(insert(OutboxMessage), self.rows)
            self.rows = []


# What operators see and do (`dpor-bot outbox list|retry`): rows not yet delivered, and dead rows requeued.


async def undelivered(db: Database, *, dead_only: bool = False) -> list[OutboxMessage]:
    """Rows still waiting for delivery and rows given up on (dead), oldest first."""
    statuses = ("dead",) if dead_only else ("pending", "dead")
    async with db.read() as session:
        query = select(OutboxMessage).where(OutboxMessage.status.in_(statuses)).order_by(OutboxMessage.id)
        return list((await session.scalars(query)).all())


async def requeue(db: Database, ids: Sequence[int] | None = None) -> list[int]:
    """Give dead rows (these ids, or every dead row when `ids` is None) a fresh set of attempts, due now.

    Refuses, writing nothing, when an id names no row or a row that is not dead.
    """
    async with db.write(chain=False) as session:
        query = select(OutboxMessage.id, OutboxMessage.status).order_by(OutboxMessage.id)
        if ids is None:
            query = query.where(OutboxMessage.status == "dead")
        else:
            query = query.where(OutboxMessage.id.in_(ids))
        found = {row_id: status for row_id, status in await session.execute(query)}
        for row_id in ids or ():
            if row_id not in found:
                raise Refusal(f"there is no outbox row {row_id}; `dpor-bot outbox list` shows them")
            if found[row_id] != "dead":
                raise Refusal(f"outbox row {row_id} is {found[row_id]}, not dead; only dead rows are retried")
        if found:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id.in_(list(found)), OutboxMessage.status == "dead")
                .values(
                    status="pending", attempts=0, available_at=utcnow(), claimed_by=None, claimed_until=None
                )
            )
        return list(found)
