"""The outbox: side effects (Slack calls, provider calls) written in the same transaction as the state."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from storage.models import OutboxMessage

# Kinds of rows, and what the worker does with each:
CARD = "card"  # post the request's approval card, or update it in place (rendered from the database)
DM = "dm"  # tell a person (the requester) what happened to their request
NOTIFY = "notify"  # a change notification in a channel
EPHEMERAL = "ephemeral"  # an answer only one person sees (e.g. a refused click)
APPLY = "apply"  # apply an approved change through the partner provider
NOTICE = "notice"  # a message in a channel about no request (e.g. partner drift found by reconcile)
KINDS = (CARD, DM, NOTIFY, EPHEMERAL, APPLY, NOTICE)


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

    async def flush(self, session: AsyncSession) -> None:
        if self.rows:
            await session.execute(insert(OutboxMessage), self.rows)
            self.rows = []
