"""The sandbox page's views over HTTP, against the Slack stand-in and a scripted bot: the shortcut and the
modal it opens, typeahead, inline errors and closing on success, App Home and clicks in it, threads,
ephemerals only for the page session, the people list read from the roles now."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest

from sandbox.page import BotAnswer, Page
from sandbox.seed import APPROVALS
from sandbox.signing import JSON_CONTENT_TYPE
from sandbox.standin import SlackStandin
from tests.sandbox.tree import find, text_of

JSONDict = dict[str, Any]
ADMIN, OWNER = "U0ADMIN", "U0OWNER1"
SET_VIEW: JSONDict = {
    "type": "modal",
    "callback_id": "dpor_set",
    "title": {"type": "plain_text", "text": "Change the DPOR"},
    "submit": {"type": "plain_text", "text": "Request"},
    "close": {"type": "plain_text", "text": "Cancel"},
    "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": ":warning: *Pick* carefully"}},
        {
            "type": "input",
            "block_id": "subscription",
            "label": {"type": "plain_text", "text": "Subscription"},
            "element": {"type": "external_select", "action_id": "subscription", "min_query_length": 0},
        },
        {
            "type": "input",
            "block_id": "reason",
            "label": {"type": "plain_text", "text": "Reason"},
            "hint": {"type": "plain_text", "text": "At most 500 characters"},
            "element": {
                "type": "plain_text_input",
                "action_id": "reason",
                "multiline": True,
                "max_length": 500,
            },
        },
    ],
}


class ScriptedBot:
    """Stands in for the bot behind the page: records what it was sent and answers with `reply`."""

    def __init__(self, slack: SlackStandin) -> None:
        self.slack = slack
        self.got: list[tuple[str, JSONDict]] = []
        self.reply: Callable[[JSONDict], Any] = lambda payload: None

    async def __call__(self, body: str, content_type: str) -> BotAnswer:
        if content_type == JSON_CONTENT_TYPE:
            payload = json.loads(body)
        else:
            form = {k: v[0] for k, v in parse_qs(body).items()}
            payload = json.loads(form["payload"]) if "payload" in form else form
        self.got.append((content_type, payload))
        return BotAnswer(200, self.reply(payload), 0.01)

    def call(self, method: str, **params: Any) -> JSONDict:
        return self.slack.workspace.methods[method](params)


@pytest.fixture
async def page() -> AsyncIterator[tuple[Page, ScriptedBot, str]]:
    slack = SlackStandin(team_id="T0DPOR")
    bot = ScriptedBot(slack)
    roles = {"now": {ADMIN: "admin of all"}}

    async def read_roles() -> dict[str, str]:
        return dict(roles["now"])

    page = Page(slack, bot, read_roles)
    page.add_routes(slack.app)
    await slack.start()
    try:
        yield page, bot, slack.url + "/"
    finally:
        page.close()
        await slack.stop()


async def api(url: str, path: str, **body: Any) -> tuple[int, JSONDict]:
    async with aiohttp.ClientSession() as http, http.post(url + path, json=body) as response:
        return response.status, await response.json()


def open_set_modal(bot: ScriptedBot) -> None:
    def reply(payload: JSONDict) -> None:
        bot.call("views.open", trigger_id=payload["trigger_id"], view=json.dumps(SET_VIEW))

    bot.reply = reply


async def test_the_shortcut_opens_the_modal_and_typeahead_asks_the_bot(page: Any) -> None:
    view_page, bot, url = page
    open_set_modal(bot)
    status, answer = await api(url, "sandbox/shortcut", user=ADMIN, callback_id="dpor_set")
    assert (status, answer["ok"]) == (200, True)
    assert bot.got[-1][1]["type"] == "shortcut" and bot.got[-1][1]["callback_id"] == "dpor_set"

    modal = (await view_page.view(ADMIN))["modal"]
    assert (modal["title"], modal["submit"], modal["close"]) == ("Change the DPOR", "Request", "Cancel")
    shown, subscription, reason = modal["blocks"]
    assert text_of(shown["node"]).endswith("Pick carefully") and find(shown["node"], cls="emoji-warning")
    assert subscription["input"]["type"] == "external_select"
    assert (reason["input"]["multiline"], reason["input"]["max_length"]) == (True, 500)
    assert text_of(reason["input"]["hint"]) == "At most 500 characters"
    assert (await view_page.view(OWNER))["modal"] is None  # only Alex's screen

    bot.reply = lambda payload: {
        "options": [
            {"text": {"type": "plain_text", "text": "Production EU (prod-eu)"}, "value": "1111"},
            {"text": {"type": "plain_text", "text": f"typed {payload['value']}"}, "value": "x"},
        ]
    }
    _, answer = await api(
        url, "sandbox/suggest", user=ADMIN, view=modal["id"], block_id="subscription", value="pro"
    )
    sent = bot.got[-1][1]
    assert (sent["type"], sent["action_id"], sent["value"]) == ("block_suggestion", "subscription", "pro")
    assert sent["view"]["id"] == modal["id"]
    assert answer["options"] == [
        {"text": "Production EU (prod-eu)", "value": "1111"},
        {"text": "typed pro", "value": "x"},
    ]
    status, _ = await api(url, "sandbox/suggest", user=ADMIN, view=modal["id"], block_id="reason", value="x")
    assert status == 409  # a plain input has no typeahead


async def test_errors_show_inline_and_keep_the_modal_and_success_closes_it(page: Any) -> None:
    view_page, bot, url = page
    open_set_modal(bot)
    await api(url, "sandbox/shortcut", user=ADMIN, callback_id="dpor_set")
    modal = (await view_page.view(ADMIN))["modal"]

    bot.reply = lambda payload: {"response_action": "errors", "errors": {"reason": "Say why: at most 500"}}
    values = {"subscription": {"option": {"text": "Production EU", "value": "1111"}}, "reason": {"value": ""}}
    _, answer = await api(url, "sandbox/submit", user=ADMIN, view=modal["id"], values=values)
    assert answer == {"ok": True, "problem": None, "errors": {"reason": "Say why: at most 500"}}
    sent = bot.got[-1][1]
    assert sent["type"] == "view_submission"
    assert sent["view"]["state"]["values"] == {
        "subscription": {
            "subscription": {
                "type": "external_select",
                "selected_option": {
                    "text": {"type": "plain_text", "text": "Production EU", "emoji": True},
                    "value": "1111",
                },
            }
        },
        "reason": {"reason": {"type": "plain_text_input", "value": None}},
    }
    still = (await view_page.view(ADMIN))["modal"]
    assert still["id"] == modal["id"]
    errors = {b["input"]["block_id"]: b["input"]["error"] for b in still["blocks"] if "input" in b}
    assert errors == {"subscription": None, "reason": "Say why: at most 500"}
    assert still["blocks"][1]["input"]["initial"] == {"text": "Production EU", "value": "1111"}  # kept

    bot.reply = lambda payload: None  # a plain ack: Slack closes the modal
    values["reason"] = {"value": "Contoso runs support"}
    _, answer = await api(url, "sandbox/submit", user=ADMIN, view=modal["id"], values=values)
    assert answer["ok"] and bot.got[-1][1]["view"]["state"]["values"]["reason"]["reason"]["value"] == (
        "Contoso runs support"
    )
    assert (await view_page.view(ADMIN))["modal"] is None
    status, _ = await api(url, "sandbox/submit", user=ADMIN, view=modal["id"], values=values)
    assert status == 409  # it is closed


async def test_bad_values_from_the_page_never_reach_the_bot_as_sent(page: Any) -> None:
    view_page, bot, url = page
    open_set_modal(bot)
    await api(url, "sandbox/shortcut", user=ADMIN, callback_id="dpor_set")
    modal = (await view_page.view(ADMIN))["modal"]
    bot.reply = lambda payload: {"response_action": "errors", "errors": {"reason": "x"}}
    hostile = {
        "subscription": {"option": "not an option"},
        "reason": {"value": 7},
        "injected": {"value": "y"},
    }
    await api(url, "sandbox/submit", user=ADMIN, view=modal["id"], values=hostile)
    values = bot.got[-1][1]["view"]["state"]["values"]
    assert set(values) == {"subscription", "reason"}
    assert values["subscription"]["subscription"]["selected_option"] is None
    assert values["reason"]["reason"]["value"] is None
    status, answer = await api(url, "sandbox/shortcut", user=ADMIN, callback_id="rm -rf")
    assert status == 400 and "no such shortcut" in answer["problem"]
    _, answer = await api(url, "sandbox/close", user=ADMIN, view=modal["id"])
    assert answer["ok"] and (await view_page.view(ADMIN))["modal"] is None


async def test_app_home_opens_with_a_signed_event_and_its_buttons_click_in_the_view(page: Any) -> None:
    view_page, bot, url = page
    home = {
        "type": "home",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Waiting for you* :hourglass:"}},
            {
                "type": "actions",
                "block_id": "req-1",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "dpor_approve",
                        "value": "1",
                        "text": {"type": "plain_text", "text": "Approve"},
                    }
                ],
            },
        ],
    }

    def publish(payload: JSONDict) -> None:
        if payload.get("type") == "event_callback":
            bot.call("views.publish", user_id=payload["event"]["user"], view=json.dumps(home))

    bot.reply = publish
    assert (await view_page.view(OWNER))["home"] is None
    _, answer = await api(url, "sandbox/home", user=OWNER)
    assert answer["ok"]
    content_type, event = bot.got[-1]
    assert content_type == JSON_CONTENT_TYPE
    assert event["event"]["type"] == "app_home_opened" and event["event"]["user"] == OWNER
    shown = (await view_page.view(OWNER))["home"]
    assert "Waiting for you" in text_of(shown["blocks"])
    (button,) = find(shown["blocks"], el="button")
    assert button["action"] == {"view": shown["id"], "action_id": "dpor_approve", "block_id": "req-1"}

    _, answer = await api(url, "sandbox/click", user=OWNER, **button["action"])
    assert answer["ok"]
    click = bot.got[-1][1]
    assert click["type"] == "block_actions" and click["view"]["id"] == shown["id"]
    assert "channel" not in click and click["actions"][0]["value"] == "1"
    assert click["trigger_id"] in bot.slack.workspace.surfaces.triggers  # usable for views.open
    status, _ = await api(url, "sandbox/click", user=ADMIN, **button["action"])
    assert status == 409  # not Alex's Home


async def test_commands_carry_a_trigger_that_opens_a_modal(page: Any) -> None:
    view_page, bot, url = page
    open_set_modal(bot)
    _, answer = await api(url, "sandbox/command", user=ADMIN, channel=APPROVALS, text="/dpor set")
    assert answer["ok"] and bot.got[-1][1]["text"] == "set"
    assert (await view_page.view(ADMIN))["modal"]["callback_id"] == "dpor_set"


async def test_replies_sit_under_their_parent(page: Any) -> None:
    view_page, bot, _ = page
    parent = bot.call("chat.postMessage", channel=APPROVALS, text="card")["ts"]
    bot.call("chat.postMessage", channel=APPROVALS, text="Approval 1 of 2", thread_ts=parent)
    bot.call("chat.postMessage", channel=APPROVALS, text=":white_check_mark: Applied", thread_ts=parent)
    (item,) = view_page.timeline(APPROVALS, OWNER)
    assert text_of(item["body"]) == "card"
    assert [text_of(r["body"]) for r in item["replies"]] == ["Approval 1 of 2", "\u2714 Applied"]


async def test_ephemerals_last_only_for_the_page_session_and_roles_are_read_each_time(page: Any) -> None:
    view_page, bot, url = page
    bot.call("chat.postEphemeral", channel=APPROVALS, user=ADMIN, text="only you")
    assert [i["kind"] for i in (await view_page.view(ADMIN, since=0.0))["channels"][0]["items"]] == [
        "ephemeral"
    ]
    reloaded = time.time()
    assert (await view_page.view(ADMIN, since=reloaded))["channels"][0]["items"] == []
    async with aiohttp.ClientSession() as http, http.get(f"{url}sandbox/state?user={ADMIN}") as response:
        state = await response.json()  # a fresh page: no `since` yet, so nothing from before it
    assert state["channels"][0]["items"] == [] and state["now"] >= reloaded
    bot.call("chat.postEphemeral", channel=APPROVALS, user=ADMIN, text="after the reload")
    items = (await view_page.view(ADMIN, since=state["now"]))["channels"][0]["items"]
    assert [text_of(i["body"]) for i in items] == ["after the reload"]

    people = {p["id"]: p["role"] for p in state["people"]}
    assert people[ADMIN] == "admin of all" and people[OWNER] == "no role"
