"""The stand-in's views: modals (views.open, views.push, views.update) and App Home (views.publish), and
message permalinks (chat.getPermalink). Each method takes a call's params and returns the answer's fields
besides "ok", or raises SlackError, as sandbox.workspace's methods do."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

JSONDict = dict[str, Any]

MAX_MODAL_STACK = 3  # Slack keeps at most three modals in a stack
VIEW_BLOCK_LIMIT = 100
TITLE_LIMIT = 24


class ViewError(Exception):
    """An answer of `{"ok": false, "error": error}` (sandbox.workspace turns it into a SlackError)."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class View:
    """A view as Slack holds it: the app's view fields plus id, hash, state and who sees it."""

    id: str
    user: str
    fields: JSONDict
    root_view_id: str
    previous_view_id: str | None = None
    hash: str = ""
    state: JSONDict = field(default_factory=lambda: {"values": {}})
    closed: bool = False

    @property
    def type(self) -> str:
        return str(self.fields.get("type", ""))

    @property
    def callback_id(self) -> str:
        return str(self.fields.get("callback_id", ""))

    @property
    def blocks(self) -> list[JSONDict]:
        return list(self.fields.get("blocks") or [])

    def payload(self, team_id: str, app_id: str, bot_id: str) -> JSONDict:
        """The view as Slack sends it back (in views.* answers and in interaction payloads)."""
        return {
            "id": self.id,
            "team_id": team_id,
            "type": self.type,
            "blocks": self.blocks,
            "private_metadata": self.fields.get("private_metadata", ""),
            "callback_id": self.callback_id,
            "state": self.state,
            "hash": self.hash,
            "title": self.fields.get("title"),
            "clear_on_close": bool(self.fields.get("clear_on_close", False)),
            "notify_on_close": bool(self.fields.get("notify_on_close", False)),
            "close": self.fields.get("close"),
            "submit": self.fields.get("submit"),
            "previous_view_id": self.previous_view_id,
            "root_view_id": self.root_view_id,
            "app_id": app_id,
            "external_id": self.fields.get("external_id", ""),
            "app_installed_team_id": team_id,
            "bot_id": bot_id,
        }


class Surfaces:
    """Every view the app opened or published, by id; each user's modal stack and Home tab."""

    def __init__(self, *, team_id: str, team_domain: str, app_id: str, bot_id: str) -> None:
        self.team_id, self.team_domain, self.app_id, self.bot_id = team_id, team_domain, app_id, bot_id
        self.views: dict[str, View] = {}
        self.stacks: dict[str, list[str]] = {}  # user -> open modal ids, the top last
        self.homes: dict[str, str] = {}  # user -> the id of their published Home view
        # Trigger ids the stand-in handed out, and whom for (a trigger opens one view, once).
        self.triggers: dict[str, str] = {}

    def methods(
        self, find_message: Callable[[str, str], object | None]
    ) -> dict[str, Callable[[JSONDict], JSONDict]]:
        self._find_message = find_message
        return {
            "views.open": self._open,
            "views.push": self._push,
            "views.update": self._update,
            "views.publish": self._publish,
            "chat.getPermalink": self._permalink,
        }

    def clear(self) -> None:
        self.views.clear()
        self.stacks.clear()
        self.homes.clear()

    # What tests and the sandbox page read

    def trigger(self, user: str) -> str:
        """A trigger id for `user`, as Slack puts in a command, shortcut or click it sends."""
        trigger_id = f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}"
        self.triggers[trigger_id] = user
        return trigger_id

    def modal(self, user: str) -> View | None:
        """The modal on top of `user`'s stack, if one is open."""
        stack = self.stacks.get(user) or []
        return self.views[stack[-1]] if stack else None

    def home(self, user: str) -> View | None:
        view_id = self.homes.get(user)
        return self.views[view_id] if view_id else None

    def close(self, user: str, *, all_: bool = False) -> None:
        """The user closes the top modal (or the whole stack), or the app's `response_action: clear`."""
        stack = self.stacks.get(user) or []
        for view_id in stack if all_ else stack[-1:]:
            self.views[view_id].closed = True
        self.stacks[user] = [] if all_ else stack[:-1]

    def answer(self, user: str, body: JSONDict | None) -> None:
        """Act on the app's answer to a view_submission, as Slack does (errors keep the modal open)."""
        action = (body or {}).get("response_action")
        top = self.modal(user)
        if top is None or action == "errors":
            return
        if action == "update":
            self._replace(top, _view_param(body))
        elif action == "push":
            self._stack(user, _view_param(body), root=top.root_view_id, previous=top.id)
        elif action == "clear":
            self.close(user, all_=True)
        else:
            self.close(user)

    def set_state(self, view_id: str, values: JSONDict) -> None:
        """What the user typed or picked in a view's inputs (state.values, by block_id then action_id)."""
        self.views[view_id].state = {"values": values}

    # Web API methods

    def _open(self, params: JSONDict) -> JSONDict:
        user = self._use_trigger(params)
        if self.stacks.get(user):
            # A new views.open replaces whatever modal the user had open.
            self.close(user, all_=True)
        view = self._stack(user, _view_param(params))
        return {"view": self.payload(view)}

    def _push(self, params: JSONDict) -> JSONDict:
        user = self._use_trigger(params)
        top = self.modal(user)
        if top is None:
            raise ViewError("not_found")
        if len(self.stacks[user]) >= MAX_MODAL_STACK:
            raise ViewError("push_limit_reached")
        view = self._stack(user, _view_param(params), root=top.root_view_id, previous=top.id)
        return {"view": self.payload(view)}

    def _update(self, params: JSONDict) -> JSONDict:
        view_id = str(params.get("view_id") or "")
        external = params.get("external_id")
        view = self.views.get(view_id) or next(
            (v for v in self.views.values() if external and v.fields.get("external_id") == external), None
        )
        if view is None or view.closed:
            raise ViewError("not_found")
        if params.get("hash") and params["hash"] != view.hash:
            raise ViewError("hash_conflict")
        self._replace(view, _view_param(params))
        return {"view": self.payload(view)}

    def _publish(self, params: JSONDict) -> JSONDict:
        user = str(params.get("user_id") or "")
        if not user.startswith(("U", "W")):
            raise ViewError("invalid_arguments")
        fields = _view_param(params)
        if fields.get("type") != "home":
            raise ViewError("invalid_arguments")
        current = self.home(user)
        if current is not None:
            if params.get("hash") and params["hash"] != current.hash:
                raise ViewError("hash_conflict")
            self._replace(current, fields)
            return {"view": self.payload(current)}
        view = self._new(user, fields)
        self.homes[user] = view.id
        return {"view": self.payload(view)}

    def _permalink(self, params: JSONDict) -> JSONDict:
        channel = str(params.get("channel") or "")
        ts = str(params.get("message_ts") or "")
        if not channel:
            raise ViewError("channel_not_found")
        if self._find_message(channel, ts) is None:
            raise ViewError("message_not_found")
        return {
            "channel": channel,
            "permalink": f"https://{self.team_domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}",
        }

    # helpers

    def _use_trigger(self, params: JSONDict) -> str:
        trigger_id = str(params.get("trigger_id") or "")
        user = self.triggers.pop(trigger_id, None)
        if user is None:
            # Slack's triggers expire after 3 s and work once: an unknown one is expired to Slack.
            raise ViewError("expired_trigger_id")
        return user

    def _stack(
        self, user: str, fields: JSONDict, *, root: str | None = None, previous: str | None = None
    ) -> View:
        if fields.get("type") != "modal":
            raise ViewError("invalid_arguments")
        view = self._new(user, fields, root=root, previous=previous)
        self.stacks.setdefault(user, []).append(view.id)
        return view

    def _new(
        self, user: str, fields: JSONDict, *, root: str | None = None, previous: str | None = None
    ) -> View:
        _check(fields)
        view_id = "V" + secrets.token_hex(5).upper()
        view = View(view_id, user, fields, root or view_id, previous)
        view.hash = _hash(fields)
        self.views[view_id] = view
        return view

    def _replace(self, view: View, fields: JSONDict) -> None:
        _check(fields)
        if fields.get("type") != view.type:
            raise ViewError("invalid_arguments")
        view.fields = fields
        view.hash = _hash(fields)

    def payload(self, view: View) -> JSONDict:
        return view.payload(self.team_id, self.app_id, self.bot_id)


def _view_param(params: JSONDict | None) -> JSONDict:
    """The `view` argument: a JSON string in form bodies, an object in JSON bodies."""
    raw = (params or {}).get("view")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ViewError("invalid_arguments") from None
    if not isinstance(raw, dict):
        raise ViewError("invalid_arguments")
    return raw


def _check(fields: JSONDict) -> None:
    """The limits Slack enforces on a view before it shows it."""
    blocks = fields.get("blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ViewError("invalid_arguments")
    if len(blocks) > VIEW_BLOCK_LIMIT:
        raise ViewError("invalid_arguments")
    if fields.get("type") == "modal":
        title = (fields.get("title") or {}).get("text", "")
        if not title or len(title) > TITLE_LIMIT:
            raise ViewError("invalid_arguments")
        if any(b.get("type") == "input" for b in blocks) and not fields.get("submit"):
            raise ViewError("invalid_arguments")  # Slack: a modal with inputs needs a submit button
    if len(str(fields.get("private_metadata", ""))) > 3000:
        raise ViewError("invalid_arguments")


def _hash(fields: JSONDict) -> str:
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode() + secrets.token_bytes(4))
    return f"{int.from_bytes(digest.digest()[:4], 'big')}.{digest.hexdigest()[:8]}"
