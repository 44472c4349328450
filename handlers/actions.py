"""Approval card buttons: Approve, Reject and Retry, decided from the database at click time."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot import lifecycle
from bot.context import BotContext
from bot.errors import Refusal
from bot.messages import APPROVE, REJECT, RETRY

log = logging.getLogger("dpor.actions")

DECIDERS = {APPROVE: lifecycle.approve, REJECT: lifecycle.reject, RETRY: lifecycle.retry}


async def decide(ctx: BotContext, action_id: str, body: dict[str, Any]) -> str | None:
    """Run one click; returns an error reference if it failed inside the bot.

    Refusals are audited and answered privately by the lifecycle (through the outbox).
    """
    action = next((a for a in body.get("actions", []) if a.get("action_id") == action_id), {})
    channel_id = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    team_id = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
    try:
        await DECIDERS[action_id](
            ctx.db,
            ctx.policy,
            request_id=str(action.get("value", "")),
            team_id=team_id,
            user_id=body["user"]["id"],
            channel_id=channel_id,
        )
    except Refusal:
        return None
    except Exception:
        ref = uuid.uuid4().hex[:8]
        log.exception("%s click failed (ref %s)", action_id, ref)
        return ref
    return None


def _listener(ctx: BotContext, action_id: str):
    async def on_click(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()  # over HTTP Bolt answers after the listener anyway; in Socket Mode this is at once
        ref = await decide(ctx, action_id, body)
        ctx.wake_worker()
        if ref is not None:
            await respond(
                text=f":boom: Something went wrong (ref {ref}). The operator can find it in the bot's log.",
                response_type="ephemeral",
                replace_original=False,
            )

    return on_click


def register(app: AsyncApp, ctx: BotContext) -> None:
    for action_id in DECIDERS:
        app.action(action_id)(_listener(ctx, action_id))
