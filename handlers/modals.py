"""The modals: the set form (`/dpor set` with no arguments, the `dpor_set` shortcut) with its typeahead,
and the reject form the card's Reject opens. A submission runs the same bot call as the command or the
click; a refusal comes back inline on its field (`response_action: errors`) and writes nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from bot import clicks, lifecycle, search
from bot.context import BotContext
from bot.errors import Refusal
from bot.logs import bound
from bot.metrics import ERROR, OK, REFUSED
from bot.text import clean
from handlers import forms
from handlers.actions import Click, after_ack
from handlers.commands import FORM_UNOPENED, request_opened
from handlers.forms import PARTNER, REASON, REJECT_FORM, SET_FORM, SUBSCRIPTION
from handlers.home import publish_home
from handlers.messages import REJECT

log = logging.getLogger("dpor.modals")

Body = dict[str, Any]
SET = "set"  # the form counts as the command it stands for (GET /metrics)

MISSING = {
    SUBSCRIPTION: "Pick a subscription.",
    PARTNER: "Pick a partner, or type the partner's Partner ID (6 or 7 digits) and pick it.",
    REASON: "Say why: the approvers read it on the card.",
}
FOREIGN = "dpor-bot serves another Slack workspace; nothing was done."
FAILED = "Something went wrong (ref {ref}); the operator can find it in the bot's log."
# Slack opens a form only on a trigger under 3 s old (`expired_trigger_id`): without a word the click or
# the shortcut would seem to do nothing at all.
UNOPENED = "Slack did not open the form (it allows 3 seconds); nothing was done. Click {button} again."
NO_CHANNEL = (
    "dpor-bot has no approval channel (DPOR_APPROVAL_CHANNEL), so nobody could approve this. "
    "Use /dpor set in a channel the bot is in, or ask an operator to set one."
)


def _foreign(body: Body, context: AsyncBoltContext) -> bool:
    """A well-signed payload from another workspace (an org-wide or shared install): not ours."""
    home = context.authorize_result.team_id if context.authorize_result else None
    return bool(home) and _team(body) != home


def _channel(view: Body) -> str | None:
    """The channel `/dpor set` was typed in, which the set form carries (None from the shortcut)."""
    channel = forms.metadata(view).get("channel")
    return channel if isinstance(channel, str) and channel else None


def _team(body: Body) -> str:
    return (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""


async def _tell(client: AsyncWebClient, user_id: str, channel_id: str | None, text: str) -> None:
    """The private answer to a submitted form: ephemeral where `/dpor set` was typed, as the typed
    command's; from the shortcut (no channel), or where Slack will not post it, in a DM."""
    if channel_id:
        try:
            await client.chat_postEphemeral(channel=channel_id, user=user_id, text=text)
            return
        except Exception as exc:
            log.info("answering the form in %s failed (%s); answering in a DM", channel_id, exc)
    try:
        opened = await client.conversations_open(users=user_id)
        await client.chat_postMessage(channel=opened["channel"]["id"], text=text)
    except Exception as exc:
        log.warning("answering the form in a DM failed: %s", exc)


def _errors(ack: AsyncAck, errors: dict[str, str]):
    return ack(response_action="errors", errors=errors)


async def submit_set(ctx: BotContext, body: Body, view: Body) -> tuple[dict[str, str], Any]:
    """Open the request the form describes: ({}, the request) or (errors by field, None)."""
    user_id = body["user"]["id"]
    picked = {block: clean(forms.value(view, block)).strip() for block in (SUBSCRIPTION, PARTNER, REASON)}
    missing = {block: MISSING[block] for block, got in picked.items() if not got}
    if missing:
        return missing, None
    channel = _channel(view)
    if not (ctx.policy.approval_channel or channel):
        return {SUBSCRIPTION: NO_CHANNEL}, None
    try:
        reason = lifecycle.validate_reason(picked[REASON])
    except Refusal as exc:
        return {REASON: forms.inline_error(exc.message, user_id)}, None
    try:
        req = await lifecycle.create_request(
            ctx.db,
            ctx.policy,
            team_id=_team(body),
            user_id=user_id,
            subscription=picked[SUBSCRIPTION],
            partner=picked[PARTNER],
            reason=reason,
            channel_id=channel,
        )
    except Refusal as exc:
        field = exc.field if exc.field in MISSING else SUBSCRIPTION
        return {field: forms.inline_error(exc.message, user_id)}, None
    return {}, req


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect([SET, clicks.REJECT])

    @app.shortcut(SET_FORM)
    async def set_shortcut(ack: AsyncAck, body: Body, client: AsyncWebClient) -> None:
        await ack()
        if not await forms.open_form(client, body.get("trigger_id", ""), forms.set_form(None)):
            # A shortcut has no channel and no response URL: the person hears it in a DM.
            after_ack(_tell(client, body["user"]["id"], None, f":no_entry: {FORM_UNOPENED}"))

    @app.options(SUBSCRIPTION)
    async def subscription_options(ack: AsyncAck, body: Body, context: AsyncBoltContext) -> None:
        if _foreign(body, context):
            return await ack(options=[])
        user_id, typed = _typed(body)
        found = search.requestable(ctx.db, user_id, typed, roles=ctx.policy.roles)
        subs = await _quietly(SUBSCRIPTION, found)
        await ack(options=[forms.subscription_option(s) for s in subs])

    @app.options(PARTNER)
    async def partner_options(ack: AsyncAck, body: Body, context: AsyncBoltContext) -> None:
        if _foreign(body, context):
            return await ack(options=[])
        found = await _quietly(PARTNER, search.partners(ctx.db, _typed(body)[1]))
        await ack(options=[forms.partner_option(p) for p in found])

    @app.view(SET_FORM)
    async def set_submitted(
        ack: AsyncAck, body: Body, view: Body, client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        user_id = body["user"]["id"]
        with bound(slack_user=user_id):
            if _foreign(body, context):
                await _errors(ack, {SUBSCRIPTION: FOREIGN})
                ctx.metrics.request(SET, REFUSED)
                return
            try:
                errors, req = await submit_set(ctx, body, view)
            except Exception:
                ref = uuid.uuid4().hex[:8]
                log.exception("the set form failed (ref %s)", ref, extra={"error_ref": ref})
                errors, req = {SUBSCRIPTION: FAILED.format(ref=ref)}, None
                ctx.metrics.request(SET, ERROR)
            else:
                ctx.metrics.request(SET, REFUSED if errors else OK)
            if errors:
                await _errors(ack, errors)
                return
            await ack()
            # After the answer: Slack closes the form without waiting for the private answer's calls.
            after_ack(_tell(client, user_id, _channel(view), request_opened(req)))

    @app.action(REJECT)
    async def reject_clicked(
        ack: AsyncAck, body: Body, client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        """Reject asks why first: nothing is written until the form is submitted."""
        await ack()
        click = Click.parse(REJECT, body)
        form = forms.reject_form(click.value, from_home=click.from_home)
        if not await forms.open_form(client, body.get("trigger_id", ""), form):
            log.info("the reject form for request %s did not open", click.value[:20])
            unopened(ctx, client, click, respond, "Reject")

    @app.view(REJECT_FORM)
    async def reject_submitted(
        ack: AsyncAck, body: Body, view: Body, client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        user_id = body["user"]["id"]
        request = str(forms.metadata(view).get("request", ""))
        with bound(slack_user=user_id, request_id=request if request.isdigit() else None):
            if _foreign(body, context):
                await _errors(ack, {REASON: FOREIGN})
                return
            reason = clean(forms.value(view, REASON)).strip()
            if not reason:
                await _errors(ack, {REASON: "Say why you reject it: the requester reads your reason."})
                ctx.metrics.request(clicks.REJECT, REFUSED)
                return
            try:
                await clicks.click(
                    ctx.db,
                    ctx.policy,
                    clicks.REJECT,
                    request_id=request,
                    team_id=_team(body),
                    user_id=user_id,
                    reason=reason,
                )
            except Refusal as exc:
                log.info("reject refused: %s", exc.code)
                ctx.metrics.request(clicks.REJECT, REFUSED)
                await _errors(ack, {REASON: forms.inline_error(exc.message, user_id)})
            except Exception:
                ref = uuid.uuid4().hex[:8]
                log.exception("the reject form failed (ref %s)", ref, extra={"error_ref": ref})
                ctx.metrics.request(clicks.REJECT, ERROR)
                await _errors(ack, {REASON: FAILED.format(ref=ref)})
            else:
                ctx.metrics.request(clicks.REJECT, OK)
                await ack()
                if forms.metadata(view).get("home") is True:  # the Home it came from shows the new state
                    after_ack(publish_home(ctx, client, user_id, team_id=_team(body) or None))


def unopened(
    ctx: BotContext, client: AsyncWebClient, click: Click, respond: AsyncRespond, button: str
) -> None:
    """Tell whoever clicked `button`, once Slack has its answer, that its form did not open: privately under
    the card, or on top of the Home (a click there has no channel)."""
    text = UNOPENED.format(button=button)
    if click.from_home:
        after_ack(publish_home(ctx, client, click.user_id, text, team_id=click.team_id or None))
    else:
        after_ack(respond(text=f":no_entry: {text}", response_type="ephemeral", replace_original=False))


async def _quietly(what: str, found: Awaitable[list[Any]]) -> list[Any]:
    """Typeahead never fails loudly: a failure is logged and answers no options."""
    try:
        return await found
    except Exception:
        log.exception("typeahead for %s failed", what)
        return []


def _typed(body: Body) -> tuple[str, str]:
    """Who is typing in a typeahead, and what they typed."""
    return (body.get("user") or {}).get("id", ""), str(body.get("value") or "")
