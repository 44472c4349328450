"""The stand-in's Slack workspace: its users, the bot's messages and ephemerals, open DMs, and the Web API
methods that read and change them. Each method takes a call's params and returns the answer's fields
besides "ok", or raises SlackError; the HTTP side (sandbox.standin) checks tokens and records calls."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.surfaces import Surfaces, ViewError

JSONDict = dict[str, Any]


class SlackError(Exception):
    """An answer of HTTP 200 with `{"ok": false, "error": error}`."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class Message:
    """A message the bot posted, as it stands now; `updated` counts the edits."""

    channel: str
    ts: str
    text: str
    blocks: list[JSONDict]
    user: str
    thread_ts: str | None = None
    updated: int = 0


@dataclass(frozen=True)
class Ephemeral:
    """A message only `user` sees, from chat.postEphemeral or an ephemeral response."""

    channel: str
    user: str
    message_ts: str
    text: str
    blocks: list[JSONDict]
    thread_ts: str | None = None


@dataclass(frozen=True)
class User:
    id: str
    name: str
    real_name: str
    tz: str = "UTC"
    is_bot: bool = False


@dataclass(frozen=True)
class ResponseTarget:
    """What a response URL was made for: the channel, the user, and the message it may replace."""

    channel: str | None
    user: str | None
    message_ts: str | None


class Workspace:
    """One team with one bot user; `methods` maps Web API method names to their implementations."""

    def __init__(self, *, team_id: str, team_domain: str, bot_user_id: str, bot_id: str, app_id: str) -> None:
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.messages: dict[str, list[Message]] = {}
        self.ephemerals: list[Ephemeral] = []
        self.opened: set[str] = set()
        self.users: dict[str, User] = {bot_user_id: User(bot_user_id, "dpor", "DPOR", is_bot=True)}
        # Channels the bot is not a member of (every other channel has it): it cannot post there.
        self.outside: set[str] = set()
        self.archived: set[str] = set()  # channels archived: read only, for the bot too
        self._last_ts_us = 0
        self.methods: dict[str, Callable[[JSONDict], JSONDict]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.postEphemeral": self._post_ephemeral,
            "conversations.info": self._conversation_info,
            "conversations.open": self._open,
            "users.info": self._users_info,
        }
        # Modals, App Home and permalinks (sandbox.surfaces).
        self.surfaces = Surfaces(team_id=team_id, team_domain=team_domain, app_id=app_id, bot_id=bot_id)
        for name, method in self.surfaces.methods(self.find).items():
            self.methods[name] = _slack_errors(method)

    def clear(self) -> None:
        """Forget messages, ephemerals and open DMs (users stay)."""
        self.messages.clear()
        self.ephemerals.clear()
        self.opened.clear()
        self.surfaces.clear()

    def dm_channel(self, user: str) -> str:
        """The ID of the bot's DM with `user`, the same every time (as conversations.open answers)."""
        return "D" + user[1:]

    def resolve(self, channel: str) -> str:
        """A channel ID; a user ID means the bot's DM with that user, as chat.postMessage takes it."""
        return self.dm_channel(channel) if channel[:1] in ("U", "W") else channel

    def find(self, channel: str, ts: str) -> Message | None:
        return next((m for m in self.messages.get(channel, []) if m.ts == ts), None)

    def apply_response(self, target: ResponseTarget, body: JSONDict) -> None:
        """A post to a response URL, as Slack acts on it (see SlackStandin.response_url)."""
        text, blocks = str(body.get("text") or ""), body.get("blocks") or []
        original = None
        if target.channel and target.message_ts:
            original = self.find(target.channel, target.message_ts)
        if original is not None and _truthy(body.get("delete_original")):
            self.messages[original.channel].remove(original)
        elif original is not None and _truthy(body.get("replace_original")):
            original.text, original.blocks = text, blocks
            original.updated += 1
        elif target.channel and body.get("response_type") == "in_channel":
            message = Message(target.channel, self._next_ts(), text, blocks, self.bot_user_id)
            self.messages.setdefault(target.channel, []).append(message)
        elif target.channel and target.user:
            self.ephemerals.append(Ephemeral(target.channel, target.user, self._next_ts(), text, blocks))

    # Web API methods

    def _auth_test(self, params: JSONDict) -> JSONDict:
        return {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": "DPOR",
            "user": self.users[self.bot_user_id].name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _post_message(self, params: JSONDict) -> JSONDict:
        channel = self._channel(params)
        if channel in self.archived:
            raise SlackError("is_archived")
        if channel in self.outside:
            raise SlackError("not_in_channel")
        text, blocks = str(params.get("text") or ""), params.get("blocks") or []
        if not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        message = Message(channel, self._next_ts(), text, blocks, self.bot_user_id, params.get("thread_ts"))
        self.messages.setdefault(channel, []).append(message)
        return {"channel": channel, "ts": message.ts, "message": self.payload(message)}

    def _update(self, params: JSONDict) -> JSONDict:
        channel = self._channel(params)
        message = self.find(channel, str(params.get("ts") or ""))
        if message is None:
            raise SlackError("message_not_found")
        if "text" in params:
            message.text = str(params["text"])
        if "blocks" in params:
            message.blocks = params["blocks"]
        message.updated += 1
        return {"channel": channel, "ts": message.ts, "text": message.text, "message": self.payload(message)}

    def _post_ephemeral(self, params: JSONDict) -> JSONDict:
        channel = self._channel(params)
        user = str(params.get("user") or "")
        if not user:
            raise SlackError("user_not_found")
        text, blocks = str(params.get("text") or ""), params.get("blocks") or []
        if not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        ephemeral = Ephemeral(channel, user, self._next_ts(), text, blocks, params.get("thread_ts"))
        self.ephemerals.append(ephemeral)
        return {"message_ts": ephemeral.message_ts}

    def _conversation_info(self, params: JSONDict) -> JSONDict:
        channel = self._channel(params)
        if channel.startswith("D"):
            return {"channel": {"id": channel, "is_im": True, "user": "U" + channel[1:]}}
        return {
            "channel": {
                "id": channel,
                "name": channel.lower(),
                "is_channel": channel.startswith("C"),
                "is_private": channel.startswith("G"),
                "is_archived": channel in self.archived,
                "is_member": channel not in self.outside,
            }
        }

    def _open(self, params: JSONDict) -> JSONDict:
        users = params.get("users") or ""
        user_ids = sorted(u.strip() for u in (users if isinstance(users, list) else str(users).split(",")))
        user_ids = [u for u in user_ids if u]
        if params.get("channel"):
            channel = str(params["channel"])
        elif len(user_ids) == 1:
            channel = self.dm_channel(user_ids[0])
        elif user_ids:
            channel = "G" + hashlib.sha1(",".join(user_ids).encode()).hexdigest()[:10].upper()
        else:
            raise SlackError("users_list_not_supplied")
        if channel in self.opened:
            return {"no_op": True, "already_open": True, "channel": {"id": channel}}
        self.opened.add(channel)
        return {"channel": {"id": channel}}

    def _users_info(self, params: JSONDict) -> JSONDict:
        user_id = str(params.get("user") or "")
        if not user_id:
            raise SlackError("user_not_found")
        user = self.users.get(user_id) or User(user_id, user_id.lower(), f"User {user_id}")
        now = datetime.now(ZoneInfo(user.tz))
        offset = now.utcoffset()
        profile: JSONDict = {
            "real_name": user.real_name,
            "real_name_normalized": user.real_name,
            "display_name": user.name,
            "display_name_normalized": user.name,
            "team": self.team_id,
        }
        if user.is_bot:
            profile["bot_id"] = self.bot_id
        return {
            "user": {
                "id": user.id,
                "team_id": self.team_id,
                "name": user.name,
                "deleted": False,
                "real_name": user.real_name,
                "tz": user.tz,
                "tz_label": now.tzname(),
                "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
                "profile": profile,
                "is_admin": False,
                "is_owner": False,
                "is_bot": user.is_bot,
                "is_app_user": False,
                "updated": int(time.time()),
            }
        }

    # helpers

    def payload(self, message: Message) -> JSONDict:
        """The message as Slack shows it: in chat.postMessage's answer, in a block_actions payload."""
        payload: JSONDict = {
            "type": "message",
            "user": message.user,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "text": message.text,
            "blocks": message.blocks,
            "team": self.team_id,
            "ts": message.ts,
        }
        if message.thread_ts:
            payload["thread_ts"] = message.thread_ts
        return payload

    def _channel(self, params: JSONDict) -> str:
        channel = str(params.get("channel") or "")
        if not channel:
            raise SlackError("channel_not_found")
        return self.resolve(channel)

    def _next_ts(self) -> str:
        """Like Slack's: seconds.microseconds of now, unique and increasing."""
        self._last_ts_us = max(time.time_ns() // 1000, self._last_ts_us + 1)
        seconds, micros = divmod(self._last_ts_us, 1_000_000)
        return f"{seconds}.{micros:06d}"


def parse_blocks(params: JSONDict) -> None:
    """Blocks come as a JSON string in form bodies and as a list in JSON bodies: make them a list."""
    blocks = params.get("blocks")
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks) if blocks.strip() else []
        except ValueError:
            raise SlackError("invalid_blocks_format") from None
        params["blocks"] = blocks
    if blocks is not None and not (isinstance(blocks, list) and all(isinstance(b, dict) for b in blocks)):
        raise SlackError("invalid_blocks_format")


def _slack_errors(method: Callable[[JSONDict], JSONDict]) -> Callable[[JSONDict], JSONDict]:
    def call(params: JSONDict) -> JSONDict:
        try:
            return method(params)
        except ViewError as e:
            raise SlackError(e.error) from None

    return call


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("true", "1")
