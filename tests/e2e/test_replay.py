"""A signed request sent again inside Slack's five-minute window is refused (401) and changes nothing,
whichever process of the bot it reaches; a delivery Slack signs anew (an Events API retry) is not a replay."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bot import directory
from bot.app import Bot, web_app
from storage import replay
from storage.models import ChangeRequest, ChannelWatch, SeenRequest, utcnow
from tests.harness import ADMIN, NEW_PARTNER, OWNER, SECRET, Harness, make_settings
from tests.slack import FORM_CONTENT_TYPE, block_actions_body, block_suggestion_body, sign, slash_command_body

NEWCOMER = "U0NEWCOMER"
TEAM_CHANNEL = "C0TEAM"


async def send(h: Harness, body: str, timestamp: int, url: str | None = None) -> int:
    status, _ = await h.client.post(url or h.url, body, timestamp=timestamp)
    return status


async def roles_of(h: Harness, user_id: str) -> list[tuple[str, str]]:
    return [(a.role, a.scope) for a in await directory.list_roles(h.bot.db) if a.user_id == user_id]


async def test_a_replayed_role_grant_does_not_undo_a_revoke(harness_any_db: Harness) -> None:
    h = harness_any_db
    grant = slash_command_body(f"role grant <@{NEWCOMER}> admin prod", user_id=OWNER)
    sent_at = int(time.time())
    assert await send(h, grant, sent_at) == 200
    assert await roles_of(h, NEWCOMER) != []
    status, _ = await h.command(f"role revoke <@{NEWCOMER}> admin prod", OWNER)
    assert status == 200 and await roles_of(h, NEWCOMER) == []
    before = await h.counts()

    assert await send(h, grant, sent_at) == 401
    assert await roles_of(h, NEWCOMER) == []
    assert await h.counts() == before


async def test_a_replayed_set_does_not_reopen_a_cancelled_request(harness_any_db: Harness) -> None:
    h = harness_any_db
    request = slash_command_body(f"set prod {NEW_PARTNER} new MSP", user_id=ADMIN)
    sent_at = int(time.time())
    assert await send(h, request, sent_at) == 200
    status, _ = await h.command("cancel 1", ADMIN)
    assert status == 200 and (await h.request(1)).status == "cancelled"
    await h.settle()
    before = await h.counts()

    assert await send(h, request, sent_at) == 401
    assert await h.counts() == before
    async with h.bot.db.read() as session:
        statuses = (await session.scalars(select(ChangeRequest.status))).all()
    assert statuses == ["cancelled"]


async def test_a_replayed_subscribe_does_not_undo_an_unsubscribe(harness: Harness) -> None:
    subscribe = slash_command_body("subscribe prod", user_id=OWNER, channel_id=TEAM_CHANNEL)
    sent_at = int(time.time())
    assert await send(harness, subscribe, sent_at) == 200
    status, _ = await harness.command("unsubscribe", OWNER, channel_id=TEAM_CHANNEL)
    assert status == 200

    assert await send(harness, subscribe, sent_at) == 401
    async with harness.bot.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(ChannelWatch)) == 0


async def test_a_replayed_click_is_refused(harness: Harness) -> None:
    status, _ = await harness.command(f"set prod {NEW_PARTNER}", ADMIN)
    assert status == 200
    card = await harness.card(1)
    body = block_actions_body("dpor_approve", "1", user_id=OWNER, channel_id=card.channel, message_ts=card.ts)
    sent_at = int(time.time())
    assert await send(harness, body, sent_at) == 200
    await harness.settle()
    before = await harness.counts()
    assert await send(harness, body, sent_at) == 401
    assert await harness.counts() == before
    assert (await harness.request(1)).status == "applied"


async def test_a_replay_to_another_process_is_refused(harness_any_db: Harness) -> None:
    """Two web apps on one database, as two `dpor-bot serve` processes behind a load balancer."""
    h = harness_any_db
    other = Bot(make_settings(h.slack, h.bot.settings.database_url), worker_poll_interval=0.05)
    server = TestServer(web_app(other), host="127.0.0.1")
    await server.start_server()
    try:
        other_url = str(server.make_url("/slack/events"))
        request = slash_command_body(f"set prod {NEW_PARTNER}", user_id=ADMIN)
        sent_at = int(time.time())
        assert await send(h, request, sent_at) == 200
        assert await send(h, request, sent_at, url=other_url) == 401

        # The same request at both processes at once: exactly one of them lets it through.
        cancel = slash_command_body("cancel 1", user_id=ADMIN)
        sent_at = int(time.time())
        statuses = await asyncio.gather(send(h, cancel, sent_at), send(h, cancel, sent_at, url=other_url))
        assert sorted(statuses) == [200, 401]
        async with h.bot.db.read() as session:
            assert await session.scalar(select(func.count()).select_from(ChangeRequest)) == 1
        assert (await h.request(1)).status == "cancelled"
    finally:
        await server.close()


async def test_a_delivery_signed_anew_is_not_a_replay(harness: Harness) -> None:
    """Slack signs each Events API retry (X-Slack-Retry-Num) with a fresh timestamp: it is let through,
    while the same bytes with the same signature are refused, telling Slack not to retry that copy."""
    body = json.dumps({"token": "legacy", "challenge": "c-1", "type": "url_verification"})
    first = int(time.time()) - 2
    async with aiohttp.ClientSession() as session:

        async def post(timestamp: int, **headers: str) -> tuple[int, str, str | None]:
            all_headers = {"Content-Type": "application/json", **sign(SECRET, body, timestamp), **headers}
            async with session.post(harness.url, data=body.encode(), headers=all_headers) as response:
                return response.status, await response.text(), response.headers.get("X-Slack-No-Retry")

        status, text, _ = await post(first)
        assert status == 200 and "c-1" in text
        status, text, _ = await post(
            first + 1, **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
        )
        assert status == 200 and "c-1" in text
        status, _, no_retry = await post(
            first + 1, **{"X-Slack-Retry-Num": "2", "X-Slack-Retry-Reason": "http_timeout"}
        )
        assert status == 401 and no_retry == "1"


async def test_signatures_are_forgotten_once_no_window_accepts_them(harness: Harness, monkeypatch) -> None:
    async with harness.bot.db.write(serial=False) as session:
        session.add(SeenRequest(digest="a" * 64, signed_at=utcnow() - timedelta(minutes=7)))
        session.add(SeenRequest(digest="b" * 64, signed_at=utcnow() - timedelta(minutes=4)))
    monkeypatch.setattr(replay, "_pruned_at", float("-inf"))  # as if the last pruning was long ago
    status, _ = await harness.client.post(
        harness.url, slash_command_body("help", user_id=ADMIN), content_type=FORM_CONTENT_TYPE
    )
    assert status == 200
    async with harness.bot.db.read() as session:
        digests = set((await session.scalars(select(SeenRequest.digest))).all())
    assert "a" * 64 not in digests and "b" * 64 in digests
    assert len(digests) == 2  # the four-minute-old one and the help request's


async def test_the_same_typeahead_twice_is_answered_twice_and_recorded_never(harness: Harness) -> None:
    """Typing the same text twice within a second sends two identical, identically signed typeahead
    requests: both are answered (a read changes nothing), and neither is recorded against replay."""
    await harness.shortcut("dpor_set", ADMIN)
    body = block_suggestion_body("subscription", "prod", user_id=ADMIN, view=harness.modal(ADMIN))
    async with harness.bot.db.read() as session:
        seen_before = await session.scalar(select(func.count()).select_from(SeenRequest))
    sent_at = int(time.time())
    answers = [await harness.client.post(harness.url, body, timestamp=sent_at) for _ in range(2)]
    assert [status for status, _ in answers] == [200, 200]
    assert answers[0][1] == answers[1][1] and answers[0][1]["options"]
    async with harness.bot.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(SeenRequest)) == seen_before
