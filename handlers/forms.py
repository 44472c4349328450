"""The modals' Block Kit: the set form (`dpor_set`), the reject form (`dpor_reject`), typeahead options
and inline errors; and opening a form on the trigger Slack sent."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient

from bot.lifecycle import MAX_REASON
from bot.search import PartnerChoice
from bot.views import Subscription
from handlers.messages import escape

log = logging.getLogger("dpor.forms")

JSONDict = dict[str, Any]

SET_FORM, REJECT_FORM = "dpor_set", "dpor_reject"
SUBSCRIPTION, PARTNER, REASON = "subscription", "partner", "reason"
OPTION_TEXT_LIMIT = 75  # Slack's limit on an option's text
ERROR_LIMIT = 300  # an inline error stays short enough to read under its field


async def open_form(client: AsyncWebClient, trigger_id: str, view: JSONDict) -> bool:
    """views.open on the trigger Slack sent; False (and a log line) when Slack would not open it."""
    try:
        await client.views_open(trigger_id=trigger_id, view=view)
    except Exception as exc:  # an expired trigger, Slack unreachable: the caller tells the person
        log.warning("views.open of %s failed: %s", view.get("callback_id"), getattr(exc, "response", exc))
        return False
    return True


def _text(text: str) -> JSONDict:
    return {"type": "plain_text", "text": text}


def _input(block_id: str, label: str, element: JSONDict, hint: str | None = None) -> JSONDict:
    block: JSONDict = {
        "type": "input",
        "block_id": block_id,
        "label": _text(label),
        "element": {**element, "action_id": block_id},
    }
    if hint:
        block["hint"] = _text(hint)
    return block


def _reason_input(label: str, placeholder: str) -> JSONDict:
    element = {
        "type": "plain_text_input",
        "multiline": True,
        "max_length": MAX_REASON,
        "placeholder": _text(placeholder),
    }
    return _input(REASON, label, element, f"Required, at most {MAX_REASON} characters.")


def set_form(channel_id: str | None) -> JSONDict:
    """The form of `/dpor set` with no arguments and of the global shortcut. `channel_id`: where the
    command was typed, to answer there once the request is open (None from the shortcut)."""
    return {
        "type": "modal",
        "callback_id": SET_FORM,
        "title": _text("Change a DPOR"),
        "submit": _text("Request"),
        "close": _text("Cancel"),
        "private_metadata": json.dumps({"channel": channel_id} if channel_id else {}),
        "blocks": [
            _input(
                SUBSCRIPTION,
                "Subscription",
                {
                    "type": "external_select",
                    "min_query_length": 0,
                    "placeholder": _text("Name, alias or ID"),
                },
                "Only the subscriptions you are an admin or owner of are listed.",
            ),
            _input(
                PARTNER,
                "New partner of record",
                {
                    "type": "external_select",
                    "min_query_length": 0,
                    "placeholder": _text("Partner name or Partner ID"),
                },
                "Pick from the partner directory, or type the partner's Partner ID (6 or 7 digits).",
            ),
            _reason_input("Reason", "Why this partner? The approvers read it on the card."),
        ],
    }


def reject_form(request_id: int | str, *, from_home: bool = False) -> JSONDict:
    """The form Reject opens (on the card or the App Home): why, before anything is written."""
    number = str(request_id)[:20]
    return {
        "type": "modal",
        "callback_id": REJECT_FORM,
        "title": _text("Reject request"),
        "submit": _text("Reject"),
        "close": _text("Cancel"),
        "private_metadata": json.dumps({"request": number, **({"home": True} if from_home else {})}),
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"Reject request #{escape(number)}? The requester and the channels that "
                    "follow the subscription read your reason.",
                },
            },
            _reason_input("Why reject it?", "What is wrong with this change?"),
        ],
    }


def metadata(view: JSONDict) -> JSONDict:
    """A form's private_metadata (the bot's own JSON; anything else reads as empty)."""
    try:
        data = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def value(view: JSONDict, block_id: str) -> str:
    """What was typed or picked in input `block_id` of a submitted view ("" when nothing)."""
    state = ((view.get("state") or {}).get("values") or {}).get(block_id) or {}
    element = state.get(block_id) or {}
    picked = element.get("selected_option") or {}
    raw = picked.get("value") if element.get("type") == "external_select" or picked else element.get("value")
    return raw if isinstance(raw, str) else ""


def _label(text: str, suffix: str = "") -> str:
    room = OPTION_TEXT_LIMIT - len(suffix)
    text = " ".join(text.split())
    return (text if len(text) <= room else text[: room - 1] + "…") + suffix


def subscription_option(sub: Subscription) -> JSONDict:
    name = f"{sub.name} ({sub.alias})" if sub.alias else sub.name
    return {"text": _text(_label(name, f" · {sub.id}")), "value": sub.id}


def partner_option(choice: PartnerChoice) -> JSONDict:
    if choice.name is None:
        return {
            "text": _text(f"{choice.partner_id} — not in the partner directory"),
            "value": choice.partner_id,
        }
    return {"text": _text(_label(choice.name, f" · {choice.partner_id}")), "value": choice.partner_id}


_PERSON = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^<>]*)?>")
_DATE = re.compile(r"<!date\^[^<>|]*\|([^<>]*)>")


def inline_error(message: str, you: str) -> str:
    """A refusal as an inline error, which Slack shows as plain text: Slack's markup made readable (the
    submitter is "you"; anyone else by Slack ID, as the bot has no users:read; a date by its UTC form),
    without code quotes, escaped as every echo of what someone typed, and short."""

    def someone(match: re.Match[str]) -> str:
        return "you" if match.group(1) == you else f"another user ({match.group(1)})"

    text = escape(_DATE.sub(r"\1", _PERSON.sub(someone, message)).replace("`", ""))
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"
