"""The deliverer: turns outbox rows into Slack Web API calls, rendered from the database at delivery time.

Slack's 429 holds the channel (in this process here, in every process through the worker's record), and
Slack's permanent errors bury the row at once instead of retrying what no retry fixes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from bot import outbox, views
from bot.context import BotContext
from bot.outbox import OutboxMessage, Recorder, Undeliverable
from bot.views import CardView
from bot.worker import CLAIM
from handlers.messages import (
    awaits_portal,
    card_blocks,
    card_text,
    checkpoint_text,
    drift_text,
    event_text,
    notification_blocks,
    reminder_text,
    role_text,
    safe,
    to_dicts,
)
from handlers.steps import ask_blocks, thread_text

# Slack errors that no retry will fix: the row goes straight to dead with the error kept.
PERMANENT_SLACK_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_blocks",
        "msg_too_long",
        "invalid_auth",
        "account_inactive",
        "token_revoked",
        "missing_scope",
        "no_text",
        "user_not_found",
        "cant_update_message",
        "message_not_found",
        "user_not_in_channel",
    }
)

Deliver = Callable[[OutboxMessage], Awaitable[Recorder | None]]

# How many of the newest claims' shared card views a deliverer keeps (`SlackDeliverer._view`).
SHARED_CLAIMS = 8
# How many people's DM channels a deliverer remembers (`SlackDeliverer._in_dm`): the oldest go first.
DM_CHANNELS = 10_000
# How many cards' permalinks a deliverer remembers (`SlackDeliverer._permalink`): the oldest go first.
PERMALINKS = 1_000


class SlackDeliverer:
    """Delivers every kind of row that speaks Slack; `deliverers()` is what the worker is handed."""

    def __init__(self, ctx: BotContext, client: AsyncWebClient) -> None:
        self.db = ctx.db
        self.client = client
        self.required = ctx.policy.required_approvals
        self.policy = ctx.policy
        # Channels Slack answered 429 for, and until when this process leaves them alone.
        self._holds: dict[str, datetime] = {}
        # Card views read for the rows of a claim, by (claim, request): see `_view`.
        self._views: dict[tuple[int, int], _Read] = {}
        self._newest_claim = 0
        # The bot's DM channel with each person it wrote to: Slack's conversations.open answers the same
        # ID every time, so it is asked once per person, not before every DM.
        self._dms: dict[str, str] = {}
        # Each card's permalink, by (channel, ts): a message's link never changes, so the DMs asking a
        # request's owners share one chat.getPermalink.
        self._links: dict[tuple[str, str], str] = {}

    def deliverers(self) -> dict[str, Deliver]:
        return {
            outbox.CARD: self.card,
            outbox.REMIND: self.remind,
            outbox.DM: self.dm,
            outbox.NOTIFY: self.notify,
            outbox.NOTICE: self.notice,
            outbox.EPHEMERAL: self.ephemeral,
            outbox.CHECKPOINT: self.checkpoint,
            outbox.ASK: self.ask,
            outbox.THREAD: self.thread,
        }

    async def _view(self, row: OutboxMessage) -> CardView:
        """The card's view for a step, DM, notification or reminder about a request: one read per request
        per claim, shared by the rows claimed together (a read after their claim shows each of them)."""
        claim, request_id = CLAIM.get(), row.payload["request_id"]
        if claim is None:  # not from the worker (a test, a tool): a read of its own
            return _found(row, await views.card(self.db, request_id, self.required, self.policy))
        shared = self._views.get((claim, request_id))
        if shared is None:
            # Begun on the loop's next turn, after the first step of every row of this claim: a card's
            # delivery among them reads anyway, and serves this read instead (see `card`).
            shared = _Read()
            shared.start = asyncio.get_running_loop().call_soon(self._read, shared, request_id)
            self._share(claim, request_id, shared)
        return _found(row, await asyncio.shield(shared.view))

    def _read(self, shared: _Read, request_id: int) -> None:
        shared.start = None
        shared.task = asyncio.ensure_future(views.card(self.db, request_id, self.required, self.policy))
        shared.task.add_done_callback(shared.done)

    def _share(self, claim: int, request_id: int, view: _Read) -> None:
        self._views[(claim, request_id)] = view
        if claim > self._newest_claim:  # forget the reads of claims long past (a late row reads anew)
            self._newest_claim = claim
            for key in [k for k in self._views if k[0] <= claim - SHARED_CLAIMS]:
                del self._views[key]

    async def card(self, row: OutboxMessage) -> Recorder:
        """Post the card, or update it in place; later card rows already committed are covered by it."""
        # Its own read: the rows it covers must be read first, in the same read as the view. Unless a row
        # of its claim began a read of this request first, the others of the claim wait for this one.
        claim, request_id = CLAIM.get(), row.payload["request_id"]
        mine: _Read | None = None
        if claim is not None:
            shared = self._views.get((claim, request_id))
            if shared is None:
                mine = _Read()
                self._share(claim, request_id, mine)
            elif shared.start is not None:  # another row of the claim asked first; its read has not begun
                shared.start.cancel()
                shared.start, mine = None, shared
        try:
            found, covered = await views.card_delivery(self.db, row, self.policy)
        except BaseException as exc:
            if mine is not None:
                mine.failed(exc)
            raise
        if mine is not None:
            mine.view.set_result(found)
        view = _found(row, found)
        req = view.request
        if req.card_channel is None:
            raise Undeliverable(f"request {req.id} has no approval channel", permanent=True)
        blocks, text = to_dicts(card_blocks(view)), card_text(view)
        posted = None
        if req.card_ts is None:
            answer = await self._call(
                req.card_channel,
                self.client.chat_postMessage,
                channel=req.card_channel,
                blocks=blocks,
                text=text,
            )
            posted = (answer["channel"], answer["ts"])
        else:
            await self._call(
                req.card_channel,
                self.client.chat_update,
                channel=req.card_channel,
                ts=req.card_ts,
                blocks=blocks,
                text=text,
            )
        return outbox.card_delivered(row, posted, covered)

    async def remind(self, row: OutboxMessage) -> None:
        view = await self._view(row)
        req = view.request
        if (req.status != "pending" and not awaits_portal(view)) or req.card_channel is None:
            return  # decided (or attested) since the reminder was queued: nothing to remind anyone of
        await self._call(
            req.card_channel,
            self.client.chat_postMessage,
            channel=req.card_channel,
            thread_ts=req.card_ts,
            text=reminder_text(view),
        )

    async def ask(self, row: OutboxMessage) -> None:
        """DM an owner who can approve a new request, with a link to its card (posted by now: same key)."""
        view = await self._view(row)
        req = view.request
        if req.status != "pending" or row.payload["user_id"] not in view.missing:
            return  # decided, approved by them, or no longer theirs to approve since the DM was queued
        link = None
        if req.card_channel and req.card_ts:
            link = await self._permalink(req.card_channel, req.card_ts)
        text, blocks = event_text(view, "asked"), to_dicts(ask_blocks(view, link))

        async def post(channel: str) -> None:
            await self._call(channel, self.client.chat_postMessage, channel=channel, text=text, blocks=blocks)

        await self._in_dm(row.payload["user_id"], post)

    async def _permalink(self, channel: str, ts: str) -> str | None:
        """The card's permalink: asked of Slack once per card per process, then remembered."""
        remembered = self._links.get((channel, ts))
        if remembered is not None:
            return remembered
        found = await self._call(None, self.client.chat_getPermalink, channel=channel, message_ts=ts)
        link = found.get("permalink")
        if link:
            if len(self._links) >= PERMALINKS:
                del self._links[next(iter(self._links))]
            self._links[(channel, ts)] = link
        return link

    async def thread(self, row: OutboxMessage) -> None:
        """One step of a request as a reply in its card's thread (none if the card was never posted)."""
        view = await self._view(row)
        req = view.request
        if req.card_channel is None or req.card_ts is None:
            return
        facts = {k: v for k, v in row.payload.items() if k in ("by", "count", "required", "error")}
        await self._call(
            req.card_channel,
            self.client.chat_postMessage,
            channel=req.card_channel,
            thread_ts=req.card_ts,
            text=thread_text(view, row.payload["event"], facts),
        )

    async def dm(self, row: OutboxMessage) -> None:
        view, event = await self._view(row), row.payload["event"]
        await self._in_dm(row.payload["user_id"], lambda channel: self._post_event(channel, view, event))

    async def _in_dm(self, user_id: str, post: Callable[[str], Awaitable[None]]) -> None:
        """`post(channel)` in the bot's DM with `user_id`. The channel is opened (conversations.open) the
        first time and remembered; should Slack refuse a remembered one for good (the DM was closed
        for good, the workspace moved), it is opened again and the post tried once more."""
        remembered = self._dms.get(user_id)
        if remembered is not None:
            try:
                return await post(remembered)
            except Undeliverable as failure:
                if not failure.permanent:
                    raise
                self._dms.pop(user_id, None)
        opened = await self._call(None, self.client.conversations_open, users=user_id)
        channel = opened["channel"]["id"]
        if len(self._dms) >= DM_CHANNELS:
            del self._dms[next(iter(self._dms))]
        self._dms[user_id] = channel
        await post(channel)

    async def notify(self, row: OutboxMessage) -> None:
        await self._post_event(row.payload["channel"], await self._view(row), row.payload["event"])

    async def _post_event(self, channel: str, view: CardView, event: str) -> None:
        await self._call(
            channel,
            self.client.chat_postMessage,
            channel=channel,
            text=event_text(view, event),
            blocks=to_dicts(notification_blocks(view, event)),
        )

    async def notice(self, row: OutboxMessage) -> None:
        channel = row.payload["channel"]
        render = {"drift": drift_text, "role": role_text}.get(row.payload.get("topic"))
        if render is None:
            raise Undeliverable(f"unknown notice {row.payload.get('topic')!r}", permanent=True)
        await self._call(
            channel, self.client.chat_postMessage, channel=channel, text=render(row.payload["facts"])
        )

    async def checkpoint(self, row: OutboxMessage) -> None:
        """The audit chain's head, published in DPOR_AUDIT_CHANNEL (the row holds it: nothing to read)."""
        channel, facts = row.payload["channel"], row.payload
        text = checkpoint_text(facts["seq"], facts["hash"], facts["at"])
        await self._call(channel, self.client.chat_postMessage, channel=channel, text=text)

    async def ephemeral(self, row: OutboxMessage) -> None:
        channel = row.payload["channel"]
        await self._call(
            channel,
            self.client.chat_postEphemeral,
            channel=channel,
            user=row.payload["user_id"],
            text=safe(row.payload["text"]),  # refusals may echo names and button values
        )

    async def _call(
        self, channel: str | None, method: Callable[..., Awaitable[AsyncSlackResponse]], /, **kwargs: Any
    ) -> AsyncSlackResponse:
        """One Web API call, unless Slack asked us to leave the channel alone for now."""
        if channel is not None:
            until = self._holds.get(channel)
            wait = (until - datetime.now(UTC)).total_seconds() if until is not None else 0.0
            if wait > 0:
                raise Undeliverable(
                    f"{channel} is rate limited for {wait:.1f}s more", retry_after=wait, rate_limited=True
                )
            self._holds.pop(channel, None)
        try:
            return await method(**kwargs)
        except SlackApiError as exc:
            failure = slack_failure(exc, channel)
            if failure.channel is not None and failure.retry_after is not None:
                until = datetime.now(UTC) + timedelta(seconds=failure.retry_after)
                self._holds[failure.channel] = max(until, self._holds.get(failure.channel, until))
            raise failure from None
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise Undeliverable(f"Slack unreachable: {type(exc).__name__}") from None


class _Read:
    """One read of a request's card view, shared by the rows of a claim: `view` once read; `start` while
    the read waits for the loop's next turn (a card's delivery may take it over); `task` once begun."""

    __slots__ = ("start", "task", "view")

    def __init__(self) -> None:
        self.view: asyncio.Future[CardView | None] = asyncio.get_running_loop().create_future()
        self.start: asyncio.Handle | None = None
        self.task: asyncio.Future[CardView | None] | None = None

    def done(self, task: asyncio.Future[CardView | None]) -> None:
        if task.cancelled():
            self.view.cancel()
        elif (exc := task.exception()) is not None:
            self.failed(exc)
        else:
            self.view.set_result(task.result())

    def failed(self, exc: BaseException) -> None:
        """The read failed: the rows waiting for it fail as it did (and are retried, as it is)."""
        if isinstance(exc, asyncio.CancelledError):
            self.view.cancel()
            return
        self.view.set_exception(exc)
        self.view.exception()  # retrieved: no "never retrieved" warning when no other row waited


def _found(row: OutboxMessage, view: CardView | None) -> CardView:
    if view is None:
        raise Undeliverable(f"request {row.payload['request_id']} does not exist", permanent=True)
    return view


def archived(error: str) -> bool:
    """Whether a dead row's error is Slack's refusal to post in an archived channel (`slack_failure`)."""
    return error == "Slack answered is_archived"


def slack_failure(exc: SlackApiError, channel: str | None) -> Undeliverable:
    response = exc.response
    error = str(response.get("error", "unknown_error")) if response is not None else "unknown_error"
    if getattr(response, "status_code", None) == 429:
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        try:
            retry_after = max(0.0, float(headers.get("retry-after", 1)))
        except (TypeError, ValueError):
            retry_after = 1.0
        where = f" for {channel}" if channel else ""
        return Undeliverable(
            f"Slack rate limited{where} (429), retry after {retry_after:g}s",
            retry_after=retry_after,
            rate_limited=True,
            channel=channel,
        )
    return Undeliverable(f"Slack answered {error}", permanent=error in PERMANENT_SLACK_ERRORS)
