"""Slack's requests to the bot (slash commands, button clicks), field for field, signed as Slack signs them.

The sandbox plays Slack with these; the tests and the benchmark use them to drive the bot over HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
API_APP_ID = "A0DPOR"
TEAM_DOMAIN = "dpor"
LEGACY_TOKEN = "legacy-verification-token"
"""Slack still sends its deprecated verification token in every payload; Bolt ignores it."""

_serial = itertools.count(1)


def sign(signing_secret: str, body: str | bytes, timestamp: int | None = None) -> dict[str, str]:
    """Slack's signature headers: `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}` under the secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(signing_secret.encode(), b"v0:%d:%s" % (ts, raw), hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def command_text(typed: str, *, users: Mapping[str, str], channels: Mapping[str, str]) -> str:
    """A command's text as Slack sends it (`should_escape: true`): &, < and > escaped, and `@handle` and
    `#channel` turned into mentions for the handles in `users` and the names in `channels` (each to an ID,
    both lower case)."""
    escaped = typed.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    def person(m: re.Match[str]) -> str:
        handle = m.group(1).lower()
        return f"<@{users[handle]}|{handle}>" if handle in users else m.group(0)

    def channel(m: re.Match[str]) -> str:
        name = m.group(1).lower()
        return f"<#{channels[name]}|{name}>" if name in channels else m.group(0)

    escaped = re.sub(r"(?<![\w@])@([\w.-]+)", person, escaped)
    return re.sub(r"(?<![\w#&])#([\w-]+)", channel, escaped)


def find_button(blocks: list[dict[str, Any]], action_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The block and the element with `action_id` in a message's blocks, or None."""
    for block in blocks:
        elements = [*block.get("elements", []), *([block["accessory"]] if "accessory" in block else [])]
        for element in elements:
            if isinstance(element, dict) and element.get("action_id") == action_id:
                return block, element
    return None


def slash_command_body(
    text: str,
    *,
    user_id: str,
    team_id: str = "T0DPOR",
    channel_id: str = "C0APPROVALS",
    command: str = "/dpor",
    response_url: str | None = None,
    user_name: str | None = None,
    channel_name: str | None = None,
    trigger_id: str | None = None,
) -> str:
    """A slash command's form-encoded body, field for field as Slack posts it."""
    return urlencode(
        {
            "token": LEGACY_TOKEN,
            "team_id": team_id,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel_id,
            "channel_name": channel_name or _channel_name(channel_id),
            "user_id": user_id,
            "user_name": user_name or user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": API_APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url or _hook_url("commands", team_id),
            "trigger_id": trigger_id or _trigger_id(),
        }
    )


def block_actions_body(
    action_id: str,
    value: str,
    *,
    user_id: str,
    team_id: str = "T0DPOR",
    channel_id: str | None = None,
    message_ts: str | None = None,
    response_url: str | None = None,
    message: Mapping[str, Any] | None = None,
    user_name: str | None = None,
    channel_name: str | None = None,
    trigger_id: str | None = None,
    view: Mapping[str, Any] | None = None,
) -> str:
    """A button click's body: form-encoded `payload=<json>` of type block_actions, as Slack posts it.

    `message` is the clicked message as posted (for example from chat.postMessage's answer); when its
    blocks hold the button, the action carries that button's block_id and text, as Slack's does.
    A click in a view (App Home, a modal) passes `view` (as views.publish answered) instead of a channel:
    Slack then sends the view and no channel, message or response URL."""
    if view is not None:
        return _view_click(action_id, value, view, user_id=user_id, team_id=team_id, trigger_id=trigger_id)
    assert channel_id is not None and message_ts is not None, "a click on a message needs its channel and ts"
    msg: dict[str, Any] = {"type": "message", "ts": message_ts, "text": "", "blocks": [], **(message or {})}
    block, button = find_button(msg["blocks"], action_id) or ({}, {})
    block_id = str(block.get("block_id") or secrets.token_hex(3))
    action = {
        "action_id": action_id,
        "block_id": block_id,
        "text": button.get("text", {"type": "plain_text", "text": action_id, "emoji": True}),
        "value": value,
        "type": "button",
        "action_ts": f"{time.time():.6f}",
    }
    username = user_name or user_id.lower()
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": username, "name": username, "team_id": team_id},
        "api_app_id": API_APP_ID,
        "token": LEGACY_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": False,
        },
        "trigger_id": trigger_id or _trigger_id(),
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name or _channel_name(channel_id)},
        "message": msg,
        "state": {"values": {}},
        "response_url": response_url or _hook_url("actions", team_id),
        "actions": [action],
    }
    return _form(payload)


def _user(user_id: str, team_id: str) -> dict[str, str]:
    return {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": team_id}


def _form(payload: Mapping[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))})


def _view_click(
    action_id: str, value: str, view: Mapping[str, Any], *, user_id: str, team_id: str, trigger_id: str | None
) -> str:
    block, button = find_button(list(view.get("blocks") or []), action_id) or ({}, {})
    return _form(
        {
            "type": "block_actions",
            "user": _user(user_id, team_id),
            "api_app_id": API_APP_ID,
            "token": LEGACY_TOKEN,
            "container": {"type": "view", "view_id": view.get("id", "")},
            "trigger_id": trigger_id or _trigger_id(),
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": dict(view),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": str(block.get("block_id") or secrets.token_hex(3)),
                    "text": button.get("text", {"type": "plain_text", "text": action_id, "emoji": True}),
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
    )


def shortcut_body(
    callback_id: str, *, user_id: str, team_id: str = "T0DPOR", trigger_id: str | None = None
) -> str:
    """A global shortcut's body (type `shortcut`), as Slack posts it when someone picks it."""
    return _form(
        {
            "type": "shortcut",
            "token": LEGACY_TOKEN,
            "action_ts": f"{time.time():.6f}",
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "user": _user(user_id, team_id),
            "is_enterprise_install": False,
            "enterprise": None,
            "callback_id": callback_id,
            "trigger_id": trigger_id or _trigger_id(),
        }
    )


def view_submission_body(
    view: Mapping[str, Any], values: Mapping[str, Any], *, user_id: str, team_id: str = "T0DPOR"
) -> str:
    """A modal's submission: the view as opened (views.open's answer) with `values` as its state.

    `values` is Slack's `state.values`: block_id -> action_id -> the element's value, for example
    `{"reason": {"reason": {"type": "plain_text_input", "value": "why"}}}`."""
    submitted = {**view, "state": {"values": dict(values)}}
    return _form(
        {
            "type": "view_submission",
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "user": _user(user_id, team_id),
            "api_app_id": API_APP_ID,
            "token": LEGACY_TOKEN,
            "trigger_id": _trigger_id(),
            "view": submitted,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
    )


def block_suggestion_body(
    action_id: str,
    typed: str,
    *,
    user_id: str,
    view: Mapping[str, Any],
    block_id: str | None = None,
    team_id: str = "T0DPOR",
) -> str:
    """An external select's typeahead request (type `block_suggestion`) for what the user has typed."""
    return _form(
        {
            "type": "block_suggestion",
            "user": _user(user_id, team_id),
            "container": {"type": "view", "view_id": view.get("id", "")},
            "api_app_id": API_APP_ID,
            "token": LEGACY_TOKEN,
            "action_id": action_id,
            "block_id": block_id or action_id,
            "value": typed,
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "view": dict(view),
        }
    )


def event_body(event: Mapping[str, Any], *, team_id: str = "T0DPOR") -> str:
    """An Events API delivery (JSON, type `event_callback`) wrapping `event`, as Slack posts it."""
    return json.dumps(
        {
            "token": LEGACY_TOKEN,
            "team_id": team_id,
            "api_app_id": API_APP_ID,
            "event": {"event_ts": f"{time.time():.6f}", **event},
            "type": "event_callback",
            "event_id": f"Ev{secrets.token_hex(5).upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": "UDPORBOT",
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        },
        separators=(",", ":"),
    )


def home_opened_event(user_id: str, view: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Slack's `app_home_opened` event for the Home tab (`view` is the published Home, if any)."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": "D" + user_id[1:],
        "tab": "home",
    }
    if view is not None:
        event["view"] = dict(view)
    return event


def url_verification_body(challenge: str) -> str:
    """Slack's check of a new Events API request URL: the app must answer with the challenge."""
    return json.dumps({"token": LEGACY_TOKEN, "challenge": challenge, "type": "url_verification"})


JSON_CONTENT_TYPE = "application/json"


def _channel_name(channel_id: str) -> str:
    if channel_id.startswith("D"):
        return "directmessage"
    if channel_id.startswith("G"):
        return "privategroup"
    return channel_id.lower()


def _hook_url(kind: str, team_id: str) -> str:
    return f"https://hooks.slack.com/{kind}/{team_id}/{next(_serial)}/{secrets.token_urlsafe(18)}"


def _trigger_id() -> str:
    return f"{next(_serial)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
