"""What people do with views on the page, sent to the bot as Slack sends it: the global shortcut, typing
in an external select (block_suggestion), submitting or closing a modal (view_submission), opening the
App Home tab (the app_home_opened event, JSON) and clicking a button in a view (block_actions with the
view, no channel). The stand-in's views (sandbox.surfaces) act on the bot's answers as Slack does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from sandbox import modals
from sandbox.seed import TEAM_ID, Person
from sandbox.signing import (
    JSON_CONTENT_TYPE,
    block_actions_body,
    block_suggestion_body,
    event_body,
    find_button,
    home_opened_event,
    shortcut_body,
    view_submission_body,
)
from sandbox.surfaces import View

if TYPE_CHECKING:
    from sandbox.page import BotAnswer, Page

JSONDict = dict[str, Any]
SHORTCUTS = {"dpor_set": "Change a DPOR"}  # the manifest's global shortcuts (name as manifest.yaml gives it)
MAX_QUERY = 200


class ViewActions:
    """The page's routes for views; `errors` holds each modal's inline errors from the bot's last answer."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: dict[str, dict[str, str]] = {}

    @property
    def surfaces(self) -> Any:
        return self.page.slack.workspace.surfaces

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/sandbox/shortcut", self._shortcut)
        app.router.add_post("/sandbox/submit", self._submit)
        app.router.add_post("/sandbox/suggest", self._suggest)
        app.router.add_post("/sandbox/close", self._close)
        app.router.add_post("/sandbox/home", self._home)

    # routes

    async def _shortcut(self, request: web.Request) -> web.Response:
        viewer, body = await self._read(request)
        callback_id = str(body.get("callback_id") or "")
        if callback_id not in SHORTCUTS:
            raise self.page.bad_request(f"no such shortcut; the app has {', '.join(SHORTCUTS)}")
        trigger = self.surfaces.trigger(viewer.id)
        form = shortcut_body(callback_id, user_id=viewer.id, team_id=TEAM_ID, trigger_id=trigger)
        problem, _ = await self._send(form, "the shortcut")
        return web.json_response({"ok": problem is None, "problem": problem})

    async def _submit(self, request: web.Request) -> web.Response:
        viewer, body = await self._read(request)
        view = self._top_modal(viewer, body.get("view"))
        values = modals.state(view, body.get("values"))
        form = view_submission_body(self.surfaces.payload(view), values, user_id=viewer.id, team_id=TEAM_ID)
        problem, answer = await self._send(form, "the submission")
        errors: dict[str, str] = {}
        if problem is None and answer is not None:
            self.surfaces.set_state(view.id, values)
            reply = answer.body if isinstance(answer.body, dict) else None
            if reply is not None and reply.get("response_action") == "errors":
                raw = reply.get("errors")
                errors = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
                self.errors[view.id] = errors
            else:
                self.errors.pop(view.id, None)
                self.surfaces.answer(viewer.id, reply)
        self.page.bump()
        return web.json_response({"ok": problem is None, "problem": problem, "errors": errors})

    async def _suggest(self, request: web.Request) -> web.Response:
        viewer, body = await self._read(request)
        view = self._top_modal(viewer, body.get("view"))
        block_id = str(body.get("block_id") or "")
        block = next((b for b in view.blocks if b.get("block_id") == block_id), None)
        element = (block or {}).get("element") or {}
        if element.get("type") != "external_select":
            raise self.page.bad_request("that field has no typeahead", status=409)
        form = block_suggestion_body(
            str(element.get("action_id") or ""),
            str(body.get("value") or "")[:MAX_QUERY],
            user_id=viewer.id,
            view=self.surfaces.payload(view),
            block_id=block_id,
            team_id=TEAM_ID,
        )
        problem, answer = await self._send(form, "the typeahead")
        found = modals.options(answer.body) if answer is not None and problem is None else []
        return web.json_response({"ok": problem is None, "problem": problem, "options": found})

    async def _close(self, request: web.Request) -> web.Response:
        viewer, body = await self._read(request)
        view = self._top_modal(viewer, body.get("view"))
        self.errors.pop(view.id, None)
        self.surfaces.close(viewer.id)
        self.page.bump()
        return web.json_response({"ok": True, "problem": None})

    async def _home(self, request: web.Request) -> web.Response:
        viewer, _ = await self._read(request)
        current = self.surfaces.home(viewer.id)
        event = home_opened_event(viewer.id, self.surfaces.payload(current) if current else None)
        problem, _ = await self._send(event_body(event, team_id=TEAM_ID), "the Home tab", JSON_CONTENT_TYPE)
        self.page.bump()
        return web.json_response({"ok": problem is None, "problem": problem})

    async def click(self, viewer: Person, body: JSONDict) -> web.Response:
        """A button in a view: the viewer's Home tab or their top modal."""
        view_id = str(body.get("view") or "")
        view = self.surfaces.views.get(view_id)
        mine = view is not None and view.user == viewer.id and not view.closed
        if view is None or not mine or view.id not in (self._home_id(viewer), self._modal_id(viewer)):
            raise self.page.bad_request("that view is no longer open", status=409)
        action_id = str(body.get("action_id") or "")
        found = find_button(view.blocks, action_id)
        if found is None or found[1].get("type") != "button":
            raise self.page.bad_request(
                "that button is no longer there: the view has just changed", status=409
            )
        form = block_actions_body(
            action_id,
            str(found[1].get("value", "")),
            user_id=viewer.id,
            team_id=TEAM_ID,
            view=self.surfaces.payload(view),
            trigger_id=self.surfaces.trigger(viewer.id),
        )
        problem, _ = await self._send(form, "the click")
        self.page.bump()
        return web.json_response({"ok": problem is None, "problem": problem})

    # what the page draws

    def modal_of(self, viewer: str) -> JSONDict | None:
        view = self.surfaces.modal(viewer)
        return modals.modal(view, self.page.names, self.errors.get(view.id)) if view else None

    def home_of(self, viewer: str) -> JSONDict | None:
        view = self.surfaces.home(viewer)
        return modals.home(view, self.page.names) if view else None

    # helpers

    async def _read(self, request: web.Request) -> tuple[Person, JSONDict]:
        body = await self.page.read_json(request)
        return self.page.person(body.get("user")), body

    def _top_modal(self, viewer: Person, view_id: object) -> View:
        view = self.surfaces.modal(viewer.id)
        if view is None or view.id != str(view_id or ""):
            raise self.page.bad_request("that modal is no longer open", status=409)
        return view

    def _home_id(self, viewer: Person) -> str | None:
        home = self.surfaces.home(viewer.id)
        return home.id if home else None

    def _modal_id(self, viewer: Person) -> str | None:
        top = self.surfaces.modal(viewer.id)
        return top.id if top else None

    async def _send(
        self, body: str, what: str, content_type: str | None = None
    ) -> tuple[str | None, BotAnswer | None]:
        """Post to the bot; a problem in Slack's words, or None and the answer."""
        from sandbox.page import BotUnreachable

        try:
            answer = await self.page.post_to_bot(body, content_type)
        except BotUnreachable as exc:
            return str(exc), None
        if answer.status != 200:
            return f"Slack would show that {what} failed: the bot answered HTTP {answer.status}.", answer
        return None, answer
