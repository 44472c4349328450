"""Approval card buttons: Approve, Reject and Retry, decided from the database at click time."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot import clicks
from bot.context import BotContext
from bot.errors import Refusal
from bot.logs import bound
from bot.metrics import ERROR, OK, REFUSED
from handlers.home import publish_home
from handlers.messages import APPROVE, RETRY

log = logging.getLogger("dpor.actions")

_AFTER_ACK: set[asyncio.Task[Any]] = set()  # held until done, so none is collected half-way


def after_ack(work: Coroutine[Any, Any, Any]) -> None:
    """Run `work` once the listener has returned: over HTTP, Bolt answers Slack only then, and Slack gives
    up after 3 s (a form shows an error and stays open, a button a warning) though the work was done."""
    task = asyncio.get_running_loop().create_task(work)
    _AFTER_ACK.add(task)
    task.add_done_callback(_AFTER_ACK.discard)


async def finish_after_ack(grace: float) -> None:
    """At shutdown, before the Slack session closes: the work begun after an ack (a form's private answer,
    a Home published again) gets `grace` seconds to finish, then is cancelled. Slack was answered already
    and asks for none of it again."""
    if _AFTER_ACK:
        _, late = await asyncio.wait(set(_AFTER_ACK), timeout=grace)
        for task in late:
            task.cancel()


# Reject asks why first: its button opens a form (handlers/modals.py), decided at submission.
ACTS = {APPROVE: clicks.APPROVE, RETRY: clicks.RETRY}


@dataclass(frozen=True)
class Click:
    """A button click, parsed once from Slack's block_actions payload."""

    action_id: str
    value: str
    user_id: str
    team_id: str
    channel_id: str | None
    from_home: bool = False  # clicked on the App Home (no channel: the answer is the Home re-published)

    @classmethod
    def parse(cls, action_id: str, body: dict[str, Any]) -> Click:
        action = next((a for a in body.get("actions", []) if a.get("action_id") == action_id), {})
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        home = (body.get("view") or {}).get("type") == "home"
        return cls(action_id, str(action.get("value", "")), body["user"]["id"], team, channel, home)


@dataclass(frozen=True)
class Outcome:
    """What a click came to: `ref` when it failed inside the bot, `refusal` when the bot refused it."""

    ref: str | None = None
    refusal: Refusal | None = None

    @property
    def notice(self) -> str | None:
        """The sentence for the clicker where no channel can carry it (the App Home), unescaped."""
        if self.ref is not None:
            return went_wrong(self.ref)
        return self.refusal.message if self.refusal is not None else None


def went_wrong(ref: str) -> str:
    return f":boom: Something went wrong (ref {ref}). The operator can find it in the bot's log."


async def decide(ctx: BotContext, click: Click) -> Outcome:
    """Run one click; its Outcome holds an error reference if it failed inside the bot, or the refusal.
    Counted by act and outcome.

    Refusals are audited, and answered privately by the bot (through the outbox) when the click came
    from a channel.
    """
    act = ACTS[click.action_id]
    request = click.value if click.value.isdigit() else None
    with bound(slack_user=click.user_id, request_id=request):
        try:
            await clicks.click(
                ctx.db,
                ctx.policy,
                act,
                request_id=click.value,
                team_id=click.team_id,
                user_id=click.user_id,
                channel_id=click.channel_id,
            )
        except Refusal as exc:
            log.info("%s click refused: %s", act, exc.code)
            ctx.metrics.request(act, REFUSED)
            return Outcome(refusal=exc)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("%s click failed (ref %s)", click.action_id, ref, extra={"error_ref": ref})
            ctx.metrics.request(act, ERROR)
            return Outcome(ref=ref)
    ctx.metrics.request(act, OK)
    return Outcome()


def _listener(ctx: BotContext, action_id: str):
    async def on_click(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient
    ) -> None:
        await ack()  # over HTTP Bolt answers after the listener anyway; in Socket Mode this is at once
        click = Click.parse(action_id, body)
        outcome = await decide(ctx, click)
        if click.from_home:
            # The Home shows the new state; a refusal or failure goes on top of it. Published after the
            # answer: a slow views.publish (a 429's Retry-After, Azure's roles for every subscription)
            # must not hold up the answer to a click already decided.
            after_ack(publish_home(ctx, client, click.user_id, outcome.notice, team_id=click.team_id or None))
        elif outcome.ref is not None:
            await respond(
                text=went_wrong(outcome.ref),
                response_type="ephemeral",
                replace_original=False,
            )

    return on_click


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect(ACTS.values())
    for action_id in ACTS:
        app.action(action_id)(_listener(ctx, action_id))
