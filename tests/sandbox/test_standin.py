"""The Slack stand-in driven by slack_sdk's real clients, and the signing helpers driven through Bolt."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.request.internals import parse_body
from slack_bolt.request.payload_utils import is_block_actions, is_slash_command, to_action
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from sandbox.standin import SlackStandin
from tests.slack import SignedSlackClient, block_actions_body, sign, slash_command_body

TOKEN = "xoxb-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BLOCKS = [
    {"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": "Set partner 4977985?"}},
    {
        "type": "actions",
        "block_id": "decision",
        "elements": [
            {
                "type": "button",
                "action_id": "dpor_approve",
                "value": "42",
                "text": {"type": "plain_text", "text": "Approve"},
            },
            {
                "type": "button",
                "action_id": "dpor_reject",
                "value": "42",
                "text": {"type": "plain_text", "text": "Reject"},
            },
        ],
    },
]


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandin]:
    async with SlackStandin(bot_token=TOKEN) as standin:
        yield standin


@pytest.fixture
def client(slack: SlackStandin) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.base_url)


async def test_auth_test_names_the_bot(slack: SlackStandin, client: AsyncWebClient) -> None:
    answer = await client.auth_test()
    assert (answer["team_id"], answer["user_id"], answer["bot_id"]) == ("T0DPOR", "UDPORBOT", "BDPORBOT")
    assert answer["url"].startswith("https://") and answer["team"]
    assert [c.method for c in slack.calls] == ["auth.test"] and slack.calls[0].ok


async def test_post_then_update_changes_the_stored_message(
    slack: SlackStandin, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel="C0APPROVALS", text="Request 42", blocks=BLOCKS)
    second = await client.chat_postMessage(channel="C0APPROVALS", text="Request 43")
    assert posted["channel"] == "C0APPROVALS" and posted["message"]["blocks"] == BLOCKS
    assert float(second["ts"]) > float(posted["ts"]) and len(posted["ts"].split(".")[1]) == 6

    new_blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "Approved by <@U1>"}}]
    updated = await client.chat_update(
        channel="C0APPROVALS", ts=posted["ts"], text="Approved", blocks=new_blocks
    )

    assert updated["ts"] == posted["ts"] and updated["message"]["text"] == "Approved"
    first, other = slack.messages("C0APPROVALS")
    assert (first.ts, first.text, first.blocks, first.updated) == (posted["ts"], "Approved", new_blocks, 1)
    assert (other.text, other.updated) == ("Request 43", 0)
    assert slack.calls_to("chat.update")[0].params["blocks"] == new_blocks


async def test_form_encoded_blocks_are_parsed_into_a_list(
    slack: SlackStandin, client: AsyncWebClient
) -> None:
    answer = await client.api_call(
        "chat.postMessage", data={"channel": "C1", "text": "x", "blocks": json.dumps(BLOCKS)}
    )
    assert slack.messages("C1")[0].blocks == BLOCKS
    assert slack.calls_to("chat.postMessage")[0].params["blocks"] == BLOCKS
    assert "token" not in slack.calls[0].params
    with pytest.raises(SlackApiError) as refused:
        await client.api_call("chat.postMessage", data={"channel": "C1", "blocks": "[{not json"})
    assert refused.value.response["error"] == "invalid_blocks_format"
    assert answer["ok"]


async def test_update_of_an_unknown_message_is_refused(slack: SlackStandin, client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as refused:
        await client.chat_update(channel="C1", ts="1700000000.000100", text="x")
    assert refused.value.response["error"] == "message_not_found"
    [call] = slack.calls_to("chat.update")
    assert not call.ok and not call.injected and call.error == "message_not_found"


async def test_dms_and_ephemerals(slack: SlackStandin, client: AsyncWebClient) -> None:
    opened = await client.conversations_open(users="U1")
    again = await client.conversations_open(users=["U1"])
    dm = opened["channel"]["id"]
    assert dm.startswith("D") and again["channel"]["id"] == dm and again["already_open"]

    posted = await client.chat_postMessage(channel="U1", text="Your request was approved")
    assert posted["channel"] == dm
    assert (
        [m.text for m in slack.messages(dm)]
        == [m.text for m in slack.messages("U1")]
        == ["Your request was approved"]
    )

    answer = await client.chat_postEphemeral(channel="C1", user="U2", text="Unknown subscription")
    [ephemeral] = slack.ephemerals("U2")
    assert (ephemeral.channel, ephemeral.text, ephemeral.message_ts) == (
        "C1",
        "Unknown subscription",
        answer["message_ts"],
    )
    assert slack.ephemerals("U1") == []


async def test_users_info(slack: SlackStandin, client: AsyncWebClient) -> None:
    slack.add_user("U7", name="ada", real_name="Ada Lovelace", tz="Europe/London")
    user = (await client.users_info(user="U7"))["user"]
    assert (user["id"], user["name"], user["real_name"], user["tz"]) == (
        "U7",
        "ada",
        "Ada Lovelace",
        "Europe/London",
    )
    assert (await client.users_info(user="UDPORBOT"))["user"]["is_bot"] is True
    assert (await client.users_info(user="U8"))["user"]["id"] == "U8"


async def test_bad_or_missing_token_is_refused(slack: SlackStandin) -> None:
    with pytest.raises(SlackApiError) as refused:
        await AsyncWebClient(token="xoxb-wrong", base_url=slack.base_url).chat_postMessage(
            channel="C1", text="x"
        )
    assert refused.value.response["error"] == "invalid_auth"
    with pytest.raises(SlackApiError) as refused:
        await AsyncWebClient(base_url=slack.base_url).auth_test()
    assert refused.value.response["error"] == "not_authed"
    assert slack.messages("C1") == [] and [c.ok for c in slack.calls] == [False, False]


async def test_unknown_method(client: AsyncWebClient) -> None:
    with pytest.raises(SlackApiError) as refused:
        await client.api_call("chat.scheduleMessage", json={"channel": "C1"})
    assert refused.value.response["error"] == "unknown_method"


async def test_429_answers_like_slack(slack: SlackStandin) -> None:
    slack.fail("chat.postMessage", retry_after=7)
    async with aiohttp.ClientSession() as http:
        url = slack.base_url + "chat.postMessage"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post(url, json={"channel": "C1", "text": "x"}, headers=headers) as response:
            assert (response.status, response.headers["Retry-After"]) == (429, "7")
            assert await response.json() == {"ok": False, "error": "ratelimited"}
        async with http.post(url, json={"channel": "C1", "text": "x"}, headers=headers) as response:
            assert response.status == 200 and (await response.json())["ok"]


async def test_429_is_retried_after_retry_after(slack: SlackStandin) -> None:
    client = AsyncWebClient(
        token=TOKEN,
        base_url=slack.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack.fail("chat.postMessage", retry_after=1)
    started = time.monotonic()
    answer = await client.chat_postMessage(channel="C1", text="card")
    assert answer["ok"] and time.monotonic() - started >= 1
    first, second = slack.calls_to("chat.postMessage")
    assert (first.ok, first.status, first.error, first.injected) == (False, 429, "ratelimited", True)
    assert second.ok and [m.text for m in slack.messages("C1")] == ["card"]


async def test_retries_run_out_when_failures_outlast_them(slack: SlackStandin) -> None:
    client = AsyncWebClient(
        token=TOKEN,
        base_url=slack.base_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail("chat.update", retry_after=0, times=2)
    with pytest.raises(SlackApiError) as refused:
        await client.chat_update(channel="C1", ts="1", text="x")
    assert (refused.value.response.status_code, refused.value.response["error"]) == (429, "ratelimited")
    assert len(slack.calls_to("chat.update")) == 2


async def test_server_errors_and_refusals_can_be_injected(
    slack: SlackStandin, client: AsyncWebClient
) -> None:
    slack.fail("chat.postMessage", status=500)
    slack.fail("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(SlackApiError) as failed:
        await client.chat_postMessage(channel="C1", text="x")
    assert failed.value.response.status_code == 500
    with pytest.raises(SlackApiError) as refused:
        await client.chat_postMessage(channel="C1", text="x")
    assert (refused.value.response.status_code, refused.value.response["error"]) == (200, "channel_not_found")
    assert (await client.chat_postMessage(channel="C1", text="x"))["ok"]
    assert [c.injected for c in slack.calls] == [True, True, False]
    with pytest.raises(ValueError, match="unknown method"):
        slack.fail("chat.postMesage")


async def test_wait_for_wakes_when_the_call_arrives(slack: SlackStandin, client: AsyncWebClient) -> None:
    async def later() -> None:
        await asyncio.sleep(0.05)
        await client.chat_postMessage(channel="C1", text="one")
        await client.chat_postMessage(channel="C1", text="two")

    task = asyncio.create_task(later())
    calls = await slack.wait_for("chat.postMessage", count=2, timeout=5)
    await task
    assert [c.params["text"] for c in calls] == ["one", "two"]


async def test_wait_for_times_out_with_the_calls_it_saw(slack: SlackStandin, client: AsyncWebClient) -> None:
    slack.fail("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(SlackApiError):
        await client.chat_postMessage(channel="C9", text="lost")
    await client.auth_test()
    with pytest.raises(AssertionError) as timed_out:
        await slack.wait_for("chat.postMessage", timeout=0.1)
    message = str(timed_out.value)
    assert "waiting for 1 successful chat.postMessage call(s); got 0" in message
    assert "chat.postMessage error=channel_not_found [injected] channel='C9' text='lost'" in message
    assert "auth.test ok" in message


async def test_response_url_records_and_applies_responses(
    slack: SlackStandin, client: AsyncWebClient
) -> None:
    card = await client.chat_postMessage(channel="C1", text="Request 42", blocks=BLOCKS)
    replace = slack.response_url("r1", channel="C1", user="U1", message_ts=card["ts"])
    await AsyncWebhookClient(replace).send(text="Approved", replace_original=True)
    await AsyncWebhookClient(slack.response_url("r2", channel="C1", user="U1")).send(text="Only you see this")

    assert (slack.message("C1", card["ts"]).text, slack.message("C1", card["ts"]).updated) == ("Approved", 1)
    assert [e.text for e in slack.ephemerals("U1")] == ["Only you see this"]
    assert [c.params["text"] for c in slack.responses("r1")] == ["Approved"]
    assert len(await slack.wait_for("response_url", count=2)) == 2


def test_signature_verifies_and_a_changed_body_does_not() -> None:
    body = slash_command_body("show sub-1", user_id="U1")
    headers = sign(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert verifier.is_valid_request(body.encode(), headers)
    assert not verifier.is_valid_request(body.replace("sub-1", "sub-2"), headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)
    assert not verifier.is_valid_request(body, sign(SECRET, body, int(time.time()) - 600))
    assert sign(SECRET, "x", 1531420618) == sign(SECRET, b"x", 1531420618)


def test_bodies_parse_as_bolt_parses_slacks() -> None:
    command = parse_body(slash_command_body("set sub-1 4977985 <@U2> & more", user_id="U1"), None)
    assert is_slash_command(command)
    assert (command["command"], command["text"], command["user_id"]) == (
        "/dpor",
        "set sub-1 4977985 <@U2> & more",
        "U1",
    )
    assert command["response_url"].startswith("https://hooks.slack.com/commands/T0DPOR/")

    raw = block_actions_body(
        "dpor_reject", "42", user_id="U1", channel_id="C1", message_ts="1.000001", message={"blocks": BLOCKS}
    )
    assert list(parse_qs(raw)) == ["payload"]
    click = parse_body(raw, None)
    assert is_block_actions(click)
    action = to_action(click)
    assert action is not None
    assert (action["action_id"], action["value"], action["block_id"]) == ("dpor_reject", "42", "decision")
    assert action["text"]["text"] == "Reject" and click["message"]["blocks"] == BLOCKS
    assert (click["team"]["id"], click["user"]["id"], click["container"]["message_ts"]) == (
        "T0DPOR",
        "U1",
        "1.000001",
    )


async def test_a_bolt_app_receives_signed_requests_and_talks_to_the_standin(slack: SlackStandin) -> None:
    app = AsyncApp(signing_secret=SECRET, client=AsyncWebClient(token=TOKEN, base_url=slack.base_url))

    @app.command("/dpor")
    async def command(ack: Any, respond: Any, client: AsyncWebClient, command: dict[str, Any]) -> None:
        await ack()
        await respond(f"echo {command['text']}")
        await client.chat_postMessage(channel="C0APPROVALS", text="card", blocks=BLOCKS)

    @app.action("dpor_approve")
    async def approve(ack: Any, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        await client.chat_update(
            channel=body["channel"]["id"],
            ts=body["message"]["ts"],
            text=f"approved {body['actions'][0]['value']}",
        )

    runner = web.AppRunner(app.web_app(path="/slack/events"), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
    try:
        async with SignedSlackClient(SECRET) as slack_client:
            status, _ = await slack_client.command(
                url, "show sub-1", "U1", response_url=slack.response_url("c1")
            )
            assert status == 200
            [card] = await slack.wait_for("chat.postMessage")
            [reply] = await slack.wait_for("response_url")
            assert reply.params["text"] == "echo show sub-1" and reply.response_token == "c1"

            ts = slack.messages("C0APPROVALS")[0].ts
            status, _ = await slack_client.click(
                url,
                "dpor_approve",
                "42",
                "U2",
                channel_id="C0APPROVALS",
                message_ts=ts,
                message={"blocks": BLOCKS},
            )
            assert status == 200
            await slack.wait_for("chat.update")
            assert slack.message("C0APPROVALS", ts).text == "approved 42"

            status, _ = await slack_client.post(
                url, slash_command_body("list", user_id="U1"), headers={"X-Slack-Signature": "v0=" + "0" * 64}
            )
            assert status == 401
    finally:
        await runner.cleanup()
    assert card.params["channel"] == "C0APPROVALS"
    assert [c.method for c in slack.calls].count("auth.test") == 1
