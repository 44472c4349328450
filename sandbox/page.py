"""The sandbox's page and its JSON API: who is who, what each person sees, and what they do there.

What someone does on the page becomes the request Slack would send (a slash command, a block_actions
click); the sandbox (sandbox.server) signs it and posts it to the bot. The bot's answers and the Web API
calls it makes come back through the Slack stand-in, whose routes this page shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from aiohttp import web

from sandbox import render
from sandbox.interact import SHORTCUTS, ViewActions
from sandbox.seed import (
    APPROVALS,
    CHANNELS,
    EXAMPLES,
    NOTIFICATIONS,
    PARTNERS,
    PEOPLE,
    SUBSCRIPTIONS,
    TEAM_ID,
    Person,
)
from sandbox.signing import (
    FORM_CONTENT_TYPE,
    block_actions_body,
    command_text,
    find_button,
    slash_command_body,
)
from sandbox.standin import Message, SlackStandin
from sandbox.timeline import Local, timeline

SLACK_TIMEOUT = 3.0  # Slack gives up on a slash command the app has not answered within 3 s
POLL_WAIT = 25.0
STATIC = files("sandbox") / "static"
STATIC_TYPES = {
    "sandbox.js": "text/javascript",
    "views.js": "text/javascript",
    "layout.js": "text/javascript",
    "dates.js": "text/javascript",
    "sandbox.css": "text/css",
}
# Defence in depth: even if markup slipped into the page, no inline script or handler would run.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMAND = re.compile(r"(\S+)\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class BotAnswer:
    status: int
    body: Any  # the JSON answer, its text when not JSON, None when empty
    seconds: float


class BotUnreachable(Exception):
    """The bot did not answer at all; the message says so for the page."""


PostToBot = Callable[[str, str], Awaitable[BotAnswer]]
"""Signs a body (form-encoded, or JSON for events) as Slack does and posts it to the bot with that
content type; raises BotUnreachable."""
Roles = Callable[[], Awaitable[dict[str, str]]]
"""Each person's roles now, as the page labels them (read from the database on each render)."""


class Page:
    """The page of one sandbox; `post` delivers what people do to the bot."""

    def __init__(self, slack: SlackStandin, post: PostToBot, roles: Roles | None = None) -> None:
        self.slack = slack
        self._post = post
        self._roles = roles
        self.version = 0
        self._locals: list[Local] = []
        self._changed = asyncio.Event()
        self._closing = False
        self._people = {p.id: p for p in PEOPLE}
        self.views = ViewActions(self)
        self.names = render.Names(
            users={slack.bot_user_id: "dpor", **{p.id: p.name for p in PEOPLE}},
            channels=CHANNELS,
            tz=datetime.now().astimezone().tzinfo or render.UTC,
        )

    def close(self) -> None:
        """Answer waiting page requests now instead of holding up the shutdown."""
        self._closing = True
        self.bump()

    def add_routes(self, app: web.Application) -> None:
        """Serve the page and its JSON API on `app`, the Slack stand-in's."""
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/sandbox/state", self._state)
        app.router.add_post("/sandbox/command", self._command)
        app.router.add_post("/sandbox/click", self._click)
        self.views.add_routes(app)

        @web.middleware
        async def notice_changes(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            try:
                return await handler(request)
            finally:
                if request.path.startswith(("/api/", "/response/")):
                    self.bump()  # the bot called the Web API or a response URL: pages may need redrawing

        app.middlewares.append(notice_changes)

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=(STATIC / "index.html").read_bytes(),
            content_type="text/html",
            charset="utf-8",
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store"},
        )

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_TYPES:
            raise web.HTTPNotFound()
        return web.Response(
            body=(STATIC / name).read_bytes(),
            content_type=STATIC_TYPES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def _state(self, request: web.Request) -> web.Response:
        """What `user` sees; waits (up to POLL_WAIT) while nothing changed since version `after`."""
        viewer = self.person(request.query.get("user") or PEOPLE[0].id)
        try:
            after = int(request.query.get("after", "-1"))
        except ValueError:
            after = -1
        try:
            # Only the page session's own ephemerals: none from before it started (a reload).
            since = float(request.query.get("since", ""))
        except ValueError:
            since = time.time()
        if after == self.version and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_WAIT):
                    await self._changed.wait()
        return web.json_response(await self.view(viewer.id, since))

    async def _command(self, request: web.Request) -> web.Response:
        body = await _json(request)
        viewer = self.person(body.get("user"))
        channel = self._channel(viewer, body.get("channel"))
        typed = str(body.get("text") or "").strip()
        if not typed:
            raise _bad_request("type a command, such as /dpor help")
        entry = Local(channel, viewer.id, self._ts(), typed[:4000])
        self._locals.append(entry)
        self.bump()
        try:
            await self._send_command(entry, viewer)
        finally:
            entry.answered = True
            self.bump()
        return web.json_response({"ok": entry.problem is None, "problem": entry.problem})

    async def _send_command(self, entry: Local, viewer: Person) -> None:
        assert entry.command is not None
        match = _COMMAND.match(entry.command)
        command, rest = (match.group(1), match.group(2).strip()) if match else ("", "")
        if not command.startswith("/"):
            entry.problem = (
                "The sandbox sends only slash commands to the bot: start with /dpor (try /dpor help)."
            )
            return
        if command != "/dpor":
            entry.problem = (
                f"{command} is not a valid command. In Slack, all messages that start with "
                'the "/" character are interpreted as commands.'
            )
            return
        form = slash_command_body(
            self.as_slack_sends(rest),
            user_id=viewer.id,
            team_id=TEAM_ID,
            channel_id=entry.channel,
            response_url=self.slack.response_url(
                secrets.token_urlsafe(12), channel=entry.channel, user=viewer.id
            ),
            user_name=viewer.handle,
            channel_name=self._channel_name(entry.channel),
            trigger_id=self.slack.workspace.surfaces.trigger(viewer.id),
        )
        try:
            answer = await self.post_to_bot(form)
        except BotUnreachable as exc:
            entry.problem = str(exc)
            return
        if answer.status != 200:
            entry.problem = (
                f'/dpor failed with the error "http_service_error" (the bot answered HTTP {answer.status})'
            )
            return
        if answer.seconds > SLACK_TIMEOUT:
            entry.problem = (
                f"The bot took {answer.seconds:.1f} s to answer: Slack gives up after 3 s and would show "
                '/dpor failed with the error "operation_timeout". Its answer:'
            )
        # The bot's answers are ephemeral (it never asks for response_type in_channel).
        if isinstance(answer.body, dict):
            entry.text, entry.blocks = str(answer.body.get("text") or ""), answer.body.get("blocks") or []
        elif isinstance(answer.body, str):
            entry.text = answer.body

    async def _click(self, request: web.Request) -> web.Response:
        body = await _json(request)
        viewer = self.person(body.get("user"))
        if body.get("view"):
            return await self.views.click(viewer, body)
        channel = self._channel(viewer, body.get("channel"))
        ts, action_id = str(body.get("ts") or ""), str(body.get("action_id") or "")
        try:
            message = self.slack.message(channel, ts)
        except KeyError:
            raise _bad_request("that message is no longer there", status=404) from None
        value = _button_value(message, action_id)
        if value is None:
            raise _bad_request(
                "that button is no longer on the message: it has just been updated", status=409
            )
        form = block_actions_body(
            action_id,
            value,
            user_id=viewer.id,
            team_id=TEAM_ID,
            channel_id=channel,
            message_ts=ts,
            response_url=self.slack.response_url(
                secrets.token_urlsafe(12), channel=channel, user=viewer.id, message_ts=ts
            ),
            message=self.slack.workspace.payload(message),
            user_name=viewer.handle,
            channel_name=self._channel_name(channel),
            trigger_id=self.slack.workspace.surfaces.trigger(viewer.id),
        )
        problem = None
        try:
            answer = await self.post_to_bot(form)
        except BotUnreachable as exc:
            problem = str(exc)
        else:
            if answer.status != 200:
                problem = f"Slack would show that the click failed: the bot answered HTTP {answer.status}."
        if problem:
            self._locals.append(Local(channel, viewer.id, self._ts(), None, problem=problem, answered=True))
            self.bump()
        return web.json_response({"ok": problem is None, "problem": problem})

    # what a person sees

    async def view(self, user_id: str, since: float = 0.0) -> dict[str, Any]:
        """The page's state for one viewer: their channels, the bot's messages, what only they have seen
        since `since` (the page session's start), their open modal and their Home tab."""
        viewer = self.person(user_id)
        dm = self.slack.dm_channel(viewer.id)
        channels = [
            (APPROVALS, f"#{CHANNELS[APPROVALS]}", "approval cards (DPOR_APPROVAL_CHANNEL)"),
            (NOTIFICATIONS, f"#{CHANNELS[NOTIFICATIONS]}", "change notifications (DPOR_NOTIFY_CHANNELS)"),
            (dm, "dpor", f"the bot's direct messages to {viewer.name}"),
        ]
        roles = await self._roles() if self._roles is not None else {p.id: p.label for p in PEOPLE}
        return {
            "version": self.version,
            "viewer": viewer.id,
            "now": time.time(),
            "people": [
                {
                    "id": p.id,
                    "name": p.name,
                    "handle": p.handle,
                    "role": roles.get(p.id, "no role"),
                    "about": p.about,
                }
                for p in PEOPLE
            ],
            "channels": [
                {"id": cid, "label": label, "about": about, "items": self.timeline(cid, viewer.id, since)}
                for cid, label, about in channels
            ],
            "modal": self.views.modal_of(viewer.id),
            "home": self.views.home_of(viewer.id),
            "shortcuts": [{"callback_id": k, "name": v} for k, v in SHORTCUTS.items()],
            "subscriptions": [{"id": s.id, "name": s.name, "alias": s.alias} for s in SUBSCRIPTIONS],
            "partners": [{"id": pid, "name": name} for pid, name in PARTNERS],
            "examples": list(EXAMPLES),
        }

    def timeline(self, channel: str, user_id: str, since: float = 0.0) -> list[dict[str, Any]]:
        """The channel as `user_id` sees it (sandbox.timeline)."""
        return timeline(self.slack, self._locals, self.names, channel, user_id, since)

    # helpers

    def bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def post_to_bot(self, body: str, content_type: str | None = None) -> BotAnswer:
        return await self._post(body, content_type or FORM_CONTENT_TYPE)

    @staticmethod
    async def read_json(request: web.Request) -> dict[str, Any]:
        return await _json(request)

    @staticmethod
    def bad_request(problem: str, status: int = 400) -> web.HTTPException:
        return _bad_request(problem, status)

    def person(self, user_id: object) -> Person:
        person = self._people.get(str(user_id or ""))
        if person is None:
            raise _bad_request(f"unknown user; choose one of {', '.join(self._people)}")
        return person

    def _channel(self, viewer: Person, channel: object) -> str:
        """A channel the viewer is in: the two channels, or their own DM with the bot."""
        channel = str(channel or "")
        if channel not in CHANNELS and channel != self.slack.dm_channel(viewer.id):
            raise _bad_request(f"{viewer.name} is not in channel {channel!r}")
        return channel

    def _channel_name(self, channel: str) -> str:
        return CHANNELS.get(channel, "directmessage")

    def as_slack_sends(self, typed: str) -> str:
        """A command's text as Slack sends it: escaped, the sandbox's @people and #channels as mentions."""
        return command_text(
            typed,
            users={p.handle: p.id for p in PEOPLE},
            channels={name: cid for cid, name in CHANNELS.items()},
        )

    def _ts(self) -> str:
        return f"{time.time():.6f}"


def _button_value(message: Message, action_id: str) -> str | None:
    found = find_button(message.blocks, action_id)
    if found is None or found[1].get("type") != "button":
        return None
    return str(found[1].get("value", ""))


async def _json(request: web.Request) -> dict[str, Any]:
    # Only the page's fetch() sends JSON: another site's form cannot post here without a CORS preflight.
    if request.content_type != "application/json":
        raise _bad_request("expected a JSON body", status=415)
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request("expected a JSON body") from None
    if not isinstance(body, dict):
        raise _bad_request("expected a JSON object")
    return body


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    415: web.HTTPUnsupportedMediaType,
}


def _bad_request(problem: str, status: int = 400) -> web.HTTPException:
    """An error the page shows as it is: `{"ok": false, "problem": ...}`."""
    return _ERRORS[status](
        text=json.dumps({"ok": False, "problem": problem}), content_type="application/json"
    )
