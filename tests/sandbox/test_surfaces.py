"""The stand-in's views (modals, App Home) and permalinks through slack_sdk's real client, and Slack's view
payloads (submissions, typeahead, shortcuts, events) as Bolt reads them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from slack_bolt.request.internals import parse_body
from slack_bolt.request.payload_utils import (
    is_block_actions,
    is_block_suggestion,
    is_event,
    is_global_shortcut,
    is_view_submission,
    to_action,
)
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from sandbox.signing import (
    block_actions_body,
    block_suggestion_body,
    event_body,
    home_opened_event,
    shortcut_body,
    view_submission_body,
)
from sandbox.standin import SlackStandin

TOKEN = "xoxb-test"
MODAL = {
    "type": "modal",
    "callback_id": "dpor_set",
    "title": {"type": "plain_text", "text": "Change the DPOR"},
    "submit": {"type": "plain_text", "text": "Request"},
    "private_metadata": "42",
    "blocks": [
        {
            "type": "input",
            "block_id": "reason",
            "label": {"type": "plain_text", "text": "Reason"},
            "element": {"type": "plain_text_input", "action_id": "reason"},
        }
    ],
}
HOME = {
    "type": "home",
    "blocks": [
        {
            "type": "actions",
            "block_id": "request_42",
            "elements": [
                {
                    "type": "button",
                    "action_id": "dpor_approve",
                    "value": "42",
                    "text": {"type": "plain_text", "text": "Approve"},
                }
            ],
        }
    ],
}


@pytest.fixture
async def slack() -> AsyncIterator[tuple[SlackStandin, AsyncWebClient]]:
    async with SlackStandin(bot_token=TOKEN) as standin:
        yield standin, AsyncWebClient(token=TOKEN, base_url=standin.base_url)


async def test_a_trigger_opens_one_modal_once(slack: tuple[SlackStandin, AsyncWebClient]) -> None:
    standin, client = slack
    surfaces = standin.workspace.surfaces
    trigger = surfaces.trigger("U1")
    opened = await client.views_open(trigger_id=trigger, view=MODAL)
    view = opened["view"]
    assert view["callback_id"] == "dpor_set" and view["private_metadata"] == "42"
    assert view["id"].startswith("V") and view["root_view_id"] == view["id"]
    assert surfaces.modal("U1") is not None and surfaces.modal("U1").id == view["id"]
    with pytest.raises(SlackApiError) as used:
        await client.views_open(trigger_id=trigger, view=MODAL)
    assert used.value.response["error"] == "expired_trigger_id"
    with pytest.raises(SlackApiError) as unknown:
        await client.views_open(trigger_id="1.2.abc", view=MODAL)
    assert unknown.value.response["error"] == "expired_trigger_id"


async def test_views_are_checked_as_slack_checks_them(slack: tuple[SlackStandin, AsyncWebClient]) -> None:
    standin, client = slack
    surfaces = standin.workspace.surfaces
    no_submit = {k: v for k, v in MODAL.items() if k != "submit"}
    long_title = {**MODAL, "title": {"type": "plain_text", "text": "x" * 25}}
    for bad in (no_submit, long_title, {**MODAL, "type": "home"}):
        with pytest.raises(SlackApiError) as refused:
            await client.views_open(trigger_id=surfaces.trigger("U1"), view=bad)
        assert refused.value.response["error"] == "invalid_arguments"
    assert surfaces.modal("U1") is None


async def test_update_and_push_keep_a_stack(slack: tuple[SlackStandin, AsyncWebClient]) -> None:
    standin, client = slack
    surfaces = standin.workspace.surfaces
    first = (await client.views_open(trigger_id=surfaces.trigger("U1"), view=MODAL))["view"]
    changed = {**MODAL, "title": {"type": "plain_text", "text": "Reject #42"}}
    updated = (await client.views_update(view_id=first["id"], hash=first["hash"], view=changed))["view"]
    assert updated["title"]["text"] == "Reject #42" and updated["hash"] != first["hash"]
    with pytest.raises(SlackApiError) as stale:
        await client.views_update(view_id=first["id"], hash=first["hash"], view=changed)
    assert stale.value.response["error"] == "hash_conflict"
    pushed = (await client.views_push(trigger_id=surfaces.trigger("U1"), view=MODAL))["view"]
    assert pushed["previous_view_id"] == first["id"] and pushed["root_view_id"] == first["id"]
    surfaces.answer("U1", None)  # an empty answer closes the top modal only
    assert surfaces.modal("U1").id == first["id"]
    surfaces.answer("U1", {"response_action": "errors", "errors": {"reason": "Say why"}})
    assert surfaces.modal("U1").id == first["id"]
    surfaces.answer("U1", {"response_action": "clear"})
    assert surfaces.modal("U1") is None


async def test_home_is_published_per_user(slack: tuple[SlackStandin, AsyncWebClient]) -> None:
    standin, client = slack
    surfaces = standin.workspace.surfaces
    first = (await client.views_publish(user_id="U1", view=HOME))["view"]
    again = (await client.views_publish(user_id="U1", view=HOME))["view"]
    assert again["id"] == first["id"] and surfaces.home("U1").id == first["id"]
    assert surfaces.home("U2") is None
    with pytest.raises(SlackApiError) as modal:
        await client.views_publish(user_id="U1", view=MODAL)
    assert modal.value.response["error"] == "invalid_arguments"
    assert [c.method for c in standin.calls].count("views.publish") == 3


async def test_permalinks_name_posted_messages_only(slack: tuple[SlackStandin, AsyncWebClient]) -> None:
    _, client = slack
    posted = await client.chat_postMessage(channel="C1", text="card")
    link = await client.chat_getPermalink(channel="C1", message_ts=posted["ts"])
    assert link["permalink"] == f"https://dpor.slack.com/archives/C1/p{posted['ts'].replace('.', '')}"
    with pytest.raises(SlackApiError) as missing:
        await client.chat_getPermalink(channel="C1", message_ts="1.000001")
    assert missing.value.response["error"] == "message_not_found"


def _payload(body: str) -> dict:
    return parse_body(body, "application/x-www-form-urlencoded")


def test_view_payloads_are_what_bolt_expects() -> None:
    view = {"id": "V1", **MODAL}
    shortcut = _payload(shortcut_body("dpor_set", user_id="U1", trigger_id="9.9.ab"))
    assert is_global_shortcut(shortcut) and shortcut["callback_id"] == "dpor_set"
    values = {"reason": {"reason": {"type": "plain_text_input", "value": "moving MSP"}}}
    submission = _payload(view_submission_body(view, values, user_id="U1"))
    assert is_view_submission(submission)
    assert submission["view"]["callback_id"] == "dpor_set"
    assert submission["view"]["state"]["values"] == values
    suggestion = _payload(block_suggestion_body("partner", "Cont", user_id="U1", view=view))
    assert is_block_suggestion(suggestion)
    assert (suggestion["action_id"], suggestion["block_id"], suggestion["value"]) == (
        "partner",
        "partner",
        "Cont",
    )
    home = {"id": "V2", **HOME}
    click = _payload(block_actions_body("dpor_approve", "42", user_id="U1", view=home))
    assert is_block_actions(click) and to_action(click)["action_id"] == "dpor_approve"
    assert click["container"] == {"type": "view", "view_id": "V2"} and "channel" not in click
    assert click["actions"][0]["block_id"] == "request_42"
    event = json.loads(event_body(home_opened_event("U1")))
    assert is_event(event) and event["event"]["type"] == "app_home_opened"
