"""Approval card buttons: Approve, Reject and Retry, decided from the database at click time."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import clicks
from bot.context import BotContext
from bot.errors import Refusal
from bot.logs import bound
from bot.metrics import ERROR, OK, REFUSED
from handlers.messages import APPROVE, REJECT, RETRY

log = logging.getLogger("dpor.actions")

ACTS = {APPROVE: clicks.APPROVE, REJECT: clicks.REJECT, RETRY: clicks.RETRY}


@dataclass(frozen=True)
class Click:
    """A button click, parsed once from Slack's block_actions payload."""

    action_id: str
    value: str
    user_id: str
    team_id: str
    channel_id: str | None

    @classmethod
    def parse(cls, action_id: str, body: dict[str, Any]) -> Click:
        action = next((a for a in body.get("actions", []) if a.get("action_id") == action_id), {})
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        return cls(action_id, str(action.get("value", "")), body["user"]["id"], team, channel)


async def decide(ctx: BotContext, click: Click) -> str | None:
    """Run one click; returns an error reference if it failed inside the bot. Counted by act and outcome.

    Refusals are audited and answered privately by the bot (through the outbox).
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
            return None
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("%s click failed (ref %s)", click.action_id, ref, extra={"error_ref": ref})
            ctx.metrics.request(act, ERROR)
            return ref
    ctx.metrics.request(act, OK)
    return None


def _listener(ctx: BotContext, action_id: str):
    async def on_click(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()  # over HTTP Bolt answers after the listener anyway; in Socket Mode this is at once
        ref = await decide(ctx, Click.parse(action_id, body))
        ctx.wake_worker()
        if ref is not None:
            await respond(
                text=f":boom: Something went wrong (ref {ref}). The operator can find it in the bot's log.",
                response_type="ephemeral",
                replace_original=False,
            )

    return on_click


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect(ACTS.values())
    for action_id in ACTS:
        app.action(action_id)(_listener(ctx, action_id))
