"""The portal provider's Slack side: the portal steps on the card, "Done in the portal" and "Could not"
(each opens a form; nothing is written until it is submitted), and the reminder while a request waits.

Done opens `dpor_portal_done` (block `note`: who did it, what the portal showed); Could not opens
`dpor_portal_failed` (block `reason`). Both carry the request id in private_metadata, and their
submission runs `bot.attest`, which re-checks the role and the request's state at that moment; a refusal
comes back inline on its field (`response_action: errors`).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncBoltContext, AsyncRespond
from slack_sdk.models.blocks import ActionsBlock, Block, ButtonElement, MarkdownTextObject, SectionBlock
from slack_sdk.web.async_client import AsyncWebClient

from bot import attest
from bot.context import BotContext
from bot.errors import Refusal
from bot.logs import bound
from bot.metrics import APPLIED, ERROR, OK, REFUSED
from bot.metrics import FAILED as FAILED_APPLY
from bot.text import clean
from bot.views import CardView
from handlers import forms
from handlers.actions import Click, after_ack
from handlers.forms import REASON
from handlers.home import publish_home
from handlers.messages import clip, escape, user
from handlers.modals import FAILED, FOREIGN, _errors, _foreign, _team, unopened

log = logging.getLogger("dpor.portal")

Body = dict[str, Any]
PORTAL_DONE, PORTAL_FAILED = "dpor_portal_done", "dpor_portal_failed"  # the buttons and their forms
NOTE = "note"
_PORTAL_URL = re.compile(r"https://[a-z0-9.-]+/?")


def portal_blocks(view: CardView) -> list[Block]:
    """The portal steps for this subscription, and the owners' two answers (the request id as value)."""
    req, sub = view.request, view.subscription
    portal = str((req.result or {}).get("portal") or "")
    where = f"<{portal}|the Azure portal>" if _PORTAL_URL.fullmatch(portal) else "the Azure portal"
    name = f"*{escape(view.new_name)}*" if view.new_name else "the partner you intend (not in the directory)"
    steps = (
        "*Set it in the Azure portal* (DPOR has no API; only an Owner of the subscription can set it):\n"
        f"1. Sign in to {where} as an Owner of *{escape(sub.name)}*.\n"
        f"2. Open *Subscriptions* → *{escape(sub.name)}* (`{sub.id}`) → *Partner information*.\n"
        f"3. Enter Partner ID `{req.partner_id}` and select *Verify*: the portal must name {name}.\n"
        "4. Select *Save*, then press *Done in the portal* and say who did it and what the portal showed."
    )
    buttons = [
        ButtonElement(text="Done in the portal", action_id=PORTAL_DONE, value=str(req.id), style="primary"),
        ButtonElement(text="Could not", action_id=PORTAL_FAILED, value=str(req.id)),
    ]
    return [
        SectionBlock(text=MarkdownTextObject(text=clip(steps))),
        ActionsBlock(block_id=f"dpor_request_{req.id}", elements=buttons),
    ]


def portal_reminder(view: CardView) -> str:
    """The reminder in the card's thread while a request waits for the portal, mentioning the owners."""
    req = view.request
    owners = ", ".join(user(owner) for owner in dict.fromkeys([*view.approvers, *view.missing]))
    return (
        f":bell: Request #{req.id} for *{escape(view.subscription.name)}* is approved but still waits for an "
        f"owner to set partner `{req.partner_id}` in the Azure portal and press *Done in the portal* "
        "(or *Could not*) on the card." + (f" Owners: {owners}." if owners else "")
    )


def _form(callback_id: str, request_id: str, from_home: bool) -> dict[str, Any]:
    number = request_id[:20]
    done = callback_id == PORTAL_DONE
    element = {
        "type": "plain_text_input",
        "action_id": NOTE if done else REASON,
        "multiline": True,
        "max_length": attest.MAX_NOTE,
        "placeholder": {
            "type": "plain_text",
            "text": "Who set it, and what the portal showed (the partner's name)"
            if done
            else "What went wrong in the portal?",
        },
    }
    ask = (
        f"Say that the partner of request #{escape(number)} is set in the Azure portal. Your note is kept in "
        "the audit log and shown on the card."
        if done
        else f"Request #{escape(number)} fails with your reason; an owner can Retry it later."
    )
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": {"type": "plain_text", "text": "Done in the portal" if done else "Could not set it"},
        "submit": {"type": "plain_text", "text": "Done" if done else "Fail it"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps({"request": number, **({"home": True} if from_home else {})}),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": ask}},
            {
                "type": "input",
                "block_id": NOTE if done else REASON,
                "label": {"type": "plain_text", "text": "Note" if done else "Why not?"},
                "element": element,
                "hint": {"type": "plain_text", "text": f"Required, at most {attest.MAX_NOTE} characters."},
            },
        ],
    }


async def _submitted(
    ctx: BotContext, act: str, ack: AsyncAck, body: Body, view: Body, client: AsyncWebClient, foreign: bool
) -> None:
    block = NOTE if act == attest.DONE else REASON
    user_id = body["user"]["id"]
    request = str(forms.metadata(view).get("request", ""))
    with bound(slack_user=user_id, request_id=request if request.isdigit() else None):
        if foreign:
            await _errors(ack, {block: FOREIGN})
            return
        text = clean(forms.value(view, block)).strip()
        finish = attest.done if act == attest.DONE else attest.could_not
        try:
            await finish(
                ctx.db,
                ctx.policy,
                request_id=request,
                team_id=_team(body),  # checked against the request strictly, as a click is
                user_id=user_id,
                **({"note": text} if act == attest.DONE else {"reason": text}),
            )
        except Refusal as exc:
            log.info("%s refused: %s", act, exc.code)
            ctx.metrics.request(act, REFUSED)
            await _errors(ack, {block: forms.inline_error(exc.message, user_id)})
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("the %s form failed (ref %s)", act, ref, extra={"error_ref": ref})
            ctx.metrics.request(act, ERROR)
            await _errors(ack, {block: FAILED.format(ref=ref)})
        else:
            ctx.metrics.request(act, OK)
            ctx.metrics.apply("portal", APPLIED if act == attest.DONE else FAILED_APPLY)
            await ack()
            if forms.metadata(view).get("home") is True:  # after the answer, as the reject form's
                after_ack(publish_home(ctx, client, user_id, team_id=_team(body) or None))


def register(app: AsyncApp, ctx: BotContext) -> None:
    ctx.metrics.expect([attest.DONE, attest.FAILED])

    def opener(action_id: str):
        async def clicked(ack: AsyncAck, body: Body, client: AsyncWebClient, respond: AsyncRespond) -> None:
            """Ask first: nothing is written until the form is submitted (roles are checked then)."""
            await ack()
            click = Click.parse(action_id, body)
            form = _form(action_id, click.value, click.from_home)
            if not await forms.open_form(client, body.get("trigger_id", ""), form):
                log.info("the %s form for request %s did not open", action_id, click.value[:20])
                button = "Done in the portal" if action_id == PORTAL_DONE else "Could not"
                unopened(ctx, client, click, respond, button)

        return clicked

    for action_id, act in ((PORTAL_DONE, attest.DONE), (PORTAL_FAILED, attest.FAILED)):
        app.action(action_id)(opener(action_id))

        def submitted(act: str = act):
            async def on_submit(
                ack: AsyncAck, body: Body, view: Body, client: AsyncWebClient, context: AsyncBoltContext
            ) -> None:
                await _submitted(ctx, act, ack, body, view, client, _foreign(body, context))

            return on_submit

        app.view(action_id)(submitted())
