"""Every /dpor subcommand over signed HTTP: answers, refusals with usage, escaping, and Slack's limits."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from sqlalchemy import select

from bot import directory
from storage.db import Database
from storage.directory import watching_channels
from storage.models import AuditEvent, OutboxMessage
from tests.harness import ADMIN, BYSTANDER, NEW_PARTNER, NOTIFY, OLD_PARTNER, OWNER, OWNER2, PROD, Harness

WRONG = [
    "frobnicate",
    "set prod",
    "set prod 12345",
    "set prod 12345678",
    "set prod abcdefg",
    "set nowhere 4977985",
    "set 11111111-2222-3333-4444-55555555555Z 4977985",
    "set 99999999-2222-3333-4444-555555555555 4977985",
    "show",
    "show nowhere",
    "show a b",
    "history",
    "history nowhere",
    "list x",
    "pending -1",
    "cancel",
    "cancel abc",
    "cancel 999",
    "role",
    "role grant",
    "role grant @alex owner",
    "role grant <@U0NEW> emperor",
    "role revoke <@U0NEW>",
    "role dance",
    "subscribe",
    "subscribe nowhere",
    "unsubscribe please",
    f"set prod {NEW_PARTNER} " + "x" * 501,
]


@pytest.mark.parametrize("text", WRONG)
async def test_wrong_arguments_get_help_and_write_nothing(harness: Harness, text: str) -> None:
    before = await harness.counts()
    status, body = await harness.command(text, OWNER)
    assert status == 200
    assert body["response_type"] == "ephemeral"
    answer = body["text"]
    assert answer.startswith((":warning:", ":no_entry:")), answer
    assert "Traceback" not in answer and "ref " not in answer
    if answer.startswith(":warning:"):
        assert "Usage:" in answer or "/dpor help" in answer
    await harness.settle()
    assert await harness.counts() == before


async def test_help_lists_every_subcommand(harness: Harness) -> None:
    _, body = await harness.command("help", BYSTANDER)
    shown = json.dumps(body)
    for word in ("set", "show", "list", "history", "pending", "cancel", "role", "subscribe", "unsubscribe"):
        assert f"/dpor {word}" in shown


async def test_bystander_cannot_request(harness: Harness) -> None:
    before = await harness.counts()
    _, body = await harness.command(f"set prod {NEW_PARTNER}", BYSTANDER)
    assert "not an admin or owner" in body["text"]
    assert await harness.counts() == before


async def test_second_open_request_is_refused_naming_the_first(harness: Harness) -> None:
    await harness.command(f"set prod {NEW_PARTNER}", ADMIN)
    _, body = await harness.command("set prod 1234566", OWNER)
    assert "Request #1" in body["text"] and "/dpor cancel 1" in body["text"]


async def test_cancel_by_requester(harness: Harness) -> None:
    await harness.command(f"set prod {NEW_PARTNER}", ADMIN)
    await harness.card(1)
    _, body = await harness.command("cancel 1", ADMIN)
    assert "cancelled" in body["text"]
    await harness.settle()
    assert (await harness.request(1)).status == "cancelled"
    card = await harness.card(1)
    assert "Cancelled" in json.dumps(card.blocks)


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUEST_TTL": "1s"}])
async def test_cancel_after_the_ttl_expires_the_request_and_says_so(harness_any_db: Harness) -> None:
    """A request past its TTL that the sweep has not reached yet ended when its TTL passed: `/dpor cancel`
    expires it (as a click on its card does) and says so, rather than record a cancellation after its end."""
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER}", ADMIN)
    await h.card(1)
    await asyncio.sleep(1.1)
    _, body = await h.command("cancel 1", ADMIN)
    assert "expired at" in body["text"] and "is cancelled" not in body["text"], body
    await h.settle()
    req = await h.request(1)
    assert (req.status, req.decided_by) == ("expired", None)
    actions = await h.audit_actions()
    assert actions[-1] == "request.expired" and "request.cancelled" not in actions
    assert "Expired" in json.dumps((await h.card(1)).blocks)


async def test_show_list_history_pending(harness: Harness) -> None:
    await harness.command(f"set prod {NEW_PARTNER} because", ADMIN)
    _, body = await harness.command("pending", BYSTANDER)
    assert "#1" in json.dumps(body)
    _, body = await harness.command("history prod", BYSTANDER)
    assert "#1" in json.dumps(body) and "pending" in json.dumps(body)
    _, body = await harness.command("list", BYSTANDER)
    assert "Production EU" in json.dumps(body) and "Dev" in json.dumps(body)
    _, body = await harness.command(f"show {PROD}", BYSTANDER)
    assert "Open request #1" in json.dumps(body)


async def test_role_grant_and_revoke_from_slack(harness: Harness) -> None:
    _, body = await harness.command("role grant <@U0NEWBIE|newbie> admin prod", BYSTANDER)
    assert "Only an owner" in body["text"]
    _, body = await harness.command("role grant <@U0NEWBIE|newbie> admin prod", OWNER)
    assert "<@U0NEWBIE> is now admin" in body["text"]
    _, body = await harness.command("role list prod", OWNER)
    assert "U0NEWBIE" in json.dumps(body)
    _, body = await harness.command(f"set prod {NEW_PARTNER}", "U0NEWBIE")
    assert "Request #1" in body["text"]
    _, body = await harness.command("role revoke U0NEWBIE admin prod", OWNER)
    assert "no longer" in body["text"]
    assert (await harness.audit_actions()).count("role.revoked") == 1


async def test_a_user_id_longer_than_slack_makes_them_is_a_usage_answer(harness_any_db: Harness) -> None:
    """A "user" of 41 characters is no Slack user (the database keeps 32; on PostgreSQL the grant used to
    fail inside the bot): the usage answer, nothing granted."""
    before = await harness_any_db.audit_actions()
    for text in ("role grant U" + "A" * 40 + " owner prod", "role grant <@U" + "A" * 40 + "> owner prod"):
        status, body = await harness_any_db.command(text, OWNER)
        assert status == 200 and "is not a Slack user" in body["text"], body
    assert await harness_any_db.audit_actions() == before


async def test_subscribed_channel_gets_notifications(harness: Harness) -> None:
    _, body = await harness.command("subscribe prod", OWNER, channel_id="C0WATCHERS")
    assert "will now get" in body["text"]
    await harness.command(f"set prod {NEW_PARTNER}", ADMIN)
    await harness.click("dpor_approve", 1, OWNER2)
    await harness.settle()
    watched = harness.slack.messages("C0WATCHERS")
    assert len(watched) == 1 and "Contoso MSP" in watched[0].text
    assert len(harness.slack.messages(NOTIFY)) == 1
    _, body = await harness.command("unsubscribe", OWNER, channel_id="C0WATCHERS")
    assert "no longer" in body["text"]


async def test_an_archived_channel_stops_watching(harness_any_db: Harness) -> None:
    """Nobody can type `/dpor unsubscribe` in an archived channel: the first notification Slack refuses
    there with is_archived removes its watches (audited as dpor-bot), so later changes do not leave a dead
    row each for it, for ever."""
    h = harness_any_db
    await h.command("subscribe prod", OWNER, channel_id="C0WATCHERS")
    h.slack.archive("C0WATCHERS")
    await h.command(f"set prod {NEW_PARTNER} first", ADMIN)
    await h.click("dpor_approve", 1, OWNER2)
    for _ in range(3):  # the apply, then the rows it queued
        await h.settle()
    assert (await h.request(1)).status == "applied"
    await h.command(f"set prod {OLD_PARTNER} second", ADMIN)
    await h.click("dpor_approve", 2, OWNER2)
    for _ in range(3):
        await h.settle()
    assert (await h.request(2)).status == "applied"
    assert len(h.slack.messages(NOTIFY)) == 2  # the other channels hear of both
    async with h.bot.db.read() as session:
        dead = (
            await session.scalars(
                select(OutboxMessage.last_error).where(
                    OutboxMessage.status == "dead", OutboxMessage.key == "channel:C0WATCHERS"
                )
            )
        ).all()
        watching = await watching_channels(session, PROD)
        dropped = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "channel.unsubscribed"))
        ).all()
    assert dead == ["Slack answered is_archived"]  # the first change's only
    assert "C0WATCHERS" not in watching
    assert [(e.actor, e.subscription_id, e.data) for e in dropped] == [
        ("dpor-bot", PROD, {"channel_id": "C0WATCHERS", "scope": PROD, "reason": "channel_archived"})
    ]


# As Slack sends them: mentions and links as markup, characters typed literally as entities.
INJECTIONS = "<!channel> <!here> <@U0VICTIM> <http://evil.example|click me> &amp; more &lt;!everyone&gt;"


async def test_echoed_text_is_escaped_everywhere(harness: Harness) -> None:
    await directory.upsert_subscriptions(
        harness.bot.db, [directory.SubscriptionRow(PROD, "Prod <!everyone>", "<!here>")], actor="test"
    )
    _, body = await harness.command(f"set &lt;!here&gt; {NEW_PARTNER} {INJECTIONS}", ADMIN)
    assert "Request #1" in body["text"], body
    assert (await harness.request(1)).reason == (
        "@channel @here @U0VICTIM click me (http://evil.example) & more <!everyone>"
    )
    await harness.click("dpor_approve", 1, OWNER)
    await harness.settle()
    sent = json.dumps([c.params for c in harness.slack.calls]) + json.dumps(body)
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<@U0VICTIM>", "<http://evil.example"):
        assert raw not in sent, raw
    assert "&lt;!everyone&gt;" in sent and "&amp; more" in sent and "@U0VICTIM" in sent
    _, body = await harness.command("show &lt;!here&gt;", ADMIN)
    assert "<!here>" not in json.dumps(body) and "&lt;!here&gt;" in json.dumps(body)
    _, body = await harness.command("show <!channel>", ADMIN)
    assert "<!channel>" not in body["text"]
    _, body = await harness.command("history &lt;!here&gt;", ADMIN)  # its title in the message's text
    assert "History of Prod &lt;!everyone&gt; (1-1 of 1)" in body["text"], body


@pytest.mark.parametrize("page", ["²", "①", "₂", "٣", "1" * 5000])
async def test_a_page_number_in_other_digits_is_a_usage_answer(harness: Harness, page: str) -> None:
    """Digits int() will not read (superscripts, circled, other scripts, thousands of them) answer how to
    write a page number, as any other bad one does; before, `isdigit()` let them through to a crash."""
    for command in (f"list {page}", f"pending {page}", f"history prod {page}"):
        status, body = await harness.command(command, BYSTANDER)
        assert status == 200 and body["text"].startswith(":warning:"), (command, body)
        # (the long run's echo is clipped before the sentence ends)
        assert "is not a page number" in body["text"] or len(page) > 100, (command, body)


async def test_reason_reads_as_typed(harness: Harness) -> None:
    """Slack sends a typed "R&D" as "R&amp;D"; the card shows R&D once, not "R&amp;D"."""
    await harness.command(f"set prod {NEW_PARTNER} R&amp;D moves to Contoso", ADMIN)
    card = await harness.card(1)
    reason = next(b for b in card.blocks if "Reason" in json.dumps(b))
    assert "R&amp;D moves" in reason["text"]["text"] and "&amp;amp;" not in reason["text"]["text"]


async def test_lists_stay_within_slack_limits(harness: Harness) -> None:
    rows = [
        directory.SubscriptionRow(
            f"{i:08x}-0000-4000-8000-{i:012x}", f"Subscription {i} " + "n" * 150, f"s{i}"
        )
        for i in range(1, 501)
    ]
    await directory.upsert_subscriptions(harness.bot.db, rows, actor="test")
    for text in ("list", "list 3", "list 26"):
        _, body = await harness.command(text, BYSTANDER)
        assert len(body.get("blocks", [])) <= 50
        for block in body.get("blocks", []):
            assert len(block.get("text", {}).get("text", "")) <= 3000
    _, body = await harness.command("list", BYSTANDER)
    assert "1-20 of 502" in json.dumps(body) and "/dpor list 2" in json.dumps(body)
    _, body = await harness.command("list 99", BYSTANDER)
    assert "no page 99" in body["text"]


async def test_healthz(harness: Harness) -> None:
    health = harness.url.replace("/slack/events", "/healthz")
    async with aiohttp.ClientSession() as session:
        async with session.get(health) as response:
            assert response.status == 200
            assert (await response.json())["ok"] is True
        healthy = harness.bot.db
        harness.bot.db = Database("sqlite+aiosqlite:////nonexistent-dir/dpor.db")
        try:
            async with session.get(health) as response:
                assert response.status == 503
                assert (await response.json()) == {"ok": False, "error": "database unreachable"}
        finally:
            await harness.bot.db.dispose()
            harness.bot.db = healthy
