"""App Home over signed HTTP: what each person sees, its buttons deciding (and refusing) exactly as the
card's, what owners alone see, and the Events API's url_verification on the same endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from bot import directory, reconcile
from sandbox.signing import JSON_CONTENT_TYPE, url_verification_body
from storage.models import AuditEvent, OutboxMessage, Subscription
from tests.bot.providers.pal import Replay, identities_file, install, ok
from tests.harness import (
    ADMIN,
    BYSTANDER,
    DEV,
    DEV_OWNER,
    NEW_PARTNER,
    OLD_PARTNER,
    OWNER,
    OWNER2,
    PROD,
    Harness,
    start_harness,
)

Blocks = list[dict[str, Any]]


async def open_request(h: Harness, sub: str = "prod", reason: str = "Contoso now runs our support") -> int:
    status, body = await h.command(f"set {sub} {NEW_PARTNER} {reason}", ADMIN)
    assert status == 200 and "Request #" in body["text"], body
    rid = int(body["text"].split("Request #")[1].split()[0])
    await h.card(rid)
    return rid


async def opened(h: Harness, user: str) -> Blocks:
    """`user` opens the Home tab; the Home Slack now shows them."""
    status, _ = await h.home_opened(user)
    assert status == 200
    view = h.home(user)
    assert view is not None, f"no Home published for {user}"
    return view["blocks"]


def text(blocks: Blocks) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def part(blocks: Blocks, title: str) -> Blocks | None:
    """The blocks under the header `title`, up to the next divider; None when there is no such header."""
    for i, block in enumerate(blocks):
        if block["type"] == "header" and block["text"]["text"] == title:
            rest = blocks[i + 1 :]
            end = next((j for j, b in enumerate(rest) if b["type"] in ("divider", "header")), len(rest))
            return rest[:end]
    return None


def buttons(blocks: Blocks) -> list[tuple[str, str]]:
    return [
        (e["action_id"], e["value"])
        for b in blocks
        if b["type"] == "actions"
        for e in b["elements"]
        if e["type"] == "button"
    ]


def notice(blocks: Blocks) -> str:
    """The notice on top of the Home (the section right after the roles line), or ''."""
    top = blocks[2] if len(blocks) > 2 else {}
    body = (top.get("text") or {}).get("text", "")
    return body if top.get("type") == "section" and body.startswith(":no_entry_sign:") else ""


def published(h: Harness, outcome: str = "ok") -> float:
    value = h.bot.metrics.registry.get_sample_value(
        "dpor_requests_total", {"kind": "home", "outcome": outcome}
    )
    return value or 0.0


async def test_owner_sees_the_request_waiting_with_the_card_summary_and_its_buttons(
    harness_any_db: Harness,
) -> None:
    h = harness_any_db
    rid = await open_request(h)
    blocks = await opened(h, OWNER)

    waiting = part(blocks, "Waiting for your approval")
    assert waiting is not None
    shown = text(waiting)
    for fact in (
        f"Request #{rid}",
        "Contoso now runs our support",
        "Production EU",
        PROD,
        "*Contoso MSP* (`4977985`)",
        "<@U0ADMIN>",
        "0 of 1 approvals",
        "<!date^",
    ):
        assert fact in shown, fact
    assert buttons(waiting) == [("dpor_approve", str(rid)), ("dpor_reject", str(rid))]
    card = await h.card(rid)
    card_actions = [b for b in card.blocks if b["type"] == "actions"]
    home_actions = [b for b in waiting if b["type"] == "actions"]
    assert home_actions == card_actions  # the same buttons, the same confirm dialog

    owned = part(blocks, "Subscriptions you own")
    assert owned is not None and "Production EU" in text(owned) and "Dev" not in text(owned)
    trouble = text(part(blocks, "Needs attention") or [])
    assert "No outbox rows given up on" in trouble and "No partner drift" in trouble
    assert "owner of *Production EU*" in text(blocks[:2])
    assert published(h) == 1

    # The global owner owns both; the owner of Dev has nothing waiting and does not see prod's request.
    everything = await opened(h, OWNER2)
    assert "Dev" in text(part(everything, "Subscriptions you own") or [])
    assert ("dpor_approve", str(rid)) in buttons(everything)
    dev = await opened(h, DEV_OWNER)
    assert buttons(dev) == []
    assert "Nothing waits for your approval" in text(part(dev, "Waiting for your approval") or [])
    assert "Production EU" not in text(part(dev, "Subscriptions you own") or [])


async def test_admin_sees_their_own_requests_and_nothing_to_approve(harness_any_db: Harness) -> None:
    h = harness_any_db
    first = await open_request(h, reason="first try")
    status, _ = await h.command(f"cancel {first}", ADMIN)
    assert status == 200
    second = await open_request(h, reason="second try")
    blocks = await opened(h, ADMIN)

    assert part(blocks, "Waiting for your approval") is None
    assert part(blocks, "Subscriptions you own") is None and part(blocks, "Needs attention") is None
    assert buttons(blocks) == []
    mine = text(part(blocks, "Your requests") or [])
    assert f"Pending approval* · #{second} *Production EU*" in mine
    assert f"Cancelled* · #{first} *Production EU*" in mine
    assert mine.index(f"#{second}") < mine.index("Recently decided") < mine.index(f"#{first}")
    assert "admin of *Production EU*" in text(blocks[:2]) and "Only owners approve" in text(blocks[:2])


async def test_bystander_learns_what_the_bot_does_and_how_to_get_a_role(harness: Harness) -> None:
    await open_request(harness)
    blocks = await opened(harness, BYSTANDER)
    shown = text(blocks)
    assert "What is dpor-bot?" in shown and "/dpor role list SUB" in shown
    assert buttons(blocks) == []
    for title in ("Waiting for your approval", "Your requests", "Subscriptions you own", "Needs attention"):
        assert part(blocks, title) is None, title


async def test_approve_from_home_decides_like_the_card_and_republishes(harness_any_db: Harness) -> None:
    h = harness_any_db
    rid = await open_request(h)
    await opened(h, OWNER)
    before = await h.counts()

    published = h.published()
    status, _ = await h.click_home("dpor_approve", rid, OWNER)
    assert status == 200
    await h.republished(published)
    await h.settle()

    assert (await h.request(rid)).status in ("approved", "applying", "applied")
    async with h.bot.db.read() as session:
        approved = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "request.approved"))
        ).all()
    assert [(e.actor, e.request_id) for e in approved] == [(OWNER, rid)]
    assert "approval.denied" not in await h.audit_actions()
    card = await h.card(rid)
    assert "dpor_approve" not in text(card.blocks)  # the card in the channel shows the decision
    assert (await h.counts())["outbox"] > before["outbox"]
    home = h.home(OWNER)
    assert home is not None
    assert notice(home["blocks"]) == ""
    assert buttons(home["blocks"]) == []  # nothing waits any more
    assert "Nothing waits for your approval" in text(home["blocks"])


async def test_a_slow_home_does_not_hold_up_the_clicks_answer(harness: Harness) -> None:
    """Slack waits 3 s for the answer to a click: the Home is published after it, not before."""
    h = harness
    rid = await open_request(h)
    await opened(h, OWNER)
    h.slack.hold("views.publish")  # Slack slow to publish (or a 429 whose Retry-After the client waits out)
    try:
        status, _ = await asyncio.wait_for(h.click_home("dpor_approve", rid, OWNER), 2)
        assert status == 200
        assert (await h.request(rid)).status in ("approved", "applying", "applied")
        await h.slack.wait_held("views.publish")
    finally:
        h.slack.release("views.publish")
    await h.slack.wait_for("views.publish", 2)
    home = h.home(OWNER)
    assert home is not None and buttons(home["blocks"]) == []


@pytest.mark.parametrize("who", ["bystander", "requester"])
async def test_refused_home_click_is_refused_as_on_the_card(harness_any_db: Harness, who: str) -> None:
    h = harness_any_db
    if who == "requester":
        await directory.grant_role(h.bot.db, ADMIN, "owner", "prod", actor="test")
    user = BYSTANDER if who == "bystander" else ADMIN
    rid = await open_request(h)

    # On the card: refused privately in the channel, audited.
    status, _ = await h.click("dpor_approve", rid, user)
    assert status == 200
    await h.settle()
    answer = h.slack.ephemerals(user)[-1].text

    await opened(h, user)
    before = await h.counts()
    published = h.published()
    status, _ = await h.click_home("dpor_approve", rid, user)
    assert status == 200
    await h.republished(published)
    await h.settle()

    after = await h.counts()
    # One more audit event, and nothing else: no request moved, no message queued.
    assert after == {**before, "audit_events": before["audit_events"] + 1}
    assert (await h.request(rid)).status == "pending"
    async with h.bot.db.read() as session:
        denied = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.action == "approval.denied").order_by(AuditEvent.seq)
            )
        ).all()
    card_denial, home_denial = denied[-2:]
    assert (home_denial.actor, home_denial.request_id, home_denial.data) == (
        card_denial.actor,
        card_denial.request_id,
        card_denial.data,
    )
    home = h.home(user)
    assert home is not None
    shown = notice(home["blocks"])
    assert shown == f":no_entry_sign: {card_denial.data['message']}"
    expected = "Only an owner" if who == "bystander" else "another owner must approve"
    assert expected in shown and expected in answer


async def test_home_click_on_a_decided_request_names_who_decided(harness_any_db: Harness) -> None:
    h = harness_any_db
    rid = await open_request(h)
    blocks = await opened(h, OWNER2)  # published while the request still waited
    assert ("dpor_approve", str(rid)) in buttons(blocks)
    status, _ = await h.click("dpor_approve", rid, OWNER)
    assert status == 200
    await h.settle()
    decided = (await h.request(rid)).status

    published = h.published()
    status, _ = await h.click_home("dpor_approve", rid, OWNER2)
    assert status == 200
    await h.republished(published)
    home = h.home(OWNER2)
    assert home is not None
    shown = notice(home["blocks"])
    assert f"Request #{rid} was already" in shown and "<@U0OWNER>" in shown, shown
    assert (await h.request(rid)).status == decided
    assert (await h.audit_actions())[-1] == "approval.denied"
    assert ("dpor_approve", str(rid)) not in buttons(home["blocks"])


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUIRED_APPROVALS": "2"}])
async def test_an_owner_who_approved_no_longer_sees_it_waiting(harness: Harness) -> None:
    rid = await open_request(harness)
    await opened(harness, OWNER)
    published = harness.published()
    status, _ = await harness.click_home("dpor_approve", rid, OWNER)
    assert status == 200
    await harness.republished(published)
    home = harness.home(OWNER)
    assert home is not None and buttons(home["blocks"]) == []
    other = await opened(harness, OWNER2)
    assert buttons(other) == [("dpor_approve", str(rid)), ("dpor_reject", str(rid))]
    assert "1 of 2 approvals" in text(part(other, "Waiting for your approval") or [])


@pytest.mark.parametrize("bot_env", [{"DPOR_ALLOW_SELF_APPROVAL": "true"}])
async def test_own_request_waits_for_its_requester_when_self_approval_is_on(harness: Harness) -> None:
    await directory.grant_role(harness.bot.db, ADMIN, "owner", "prod", actor="test")
    rid = await open_request(harness)
    blocks = await opened(harness, ADMIN)
    assert ("dpor_approve", str(rid)) in buttons(part(blocks, "Waiting for your approval") or [])


async def test_long_lists_are_capped_within_slacks_block_limit(harness: Harness) -> None:
    rows = [
        directory.SubscriptionRow(f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd", f"Team {i:02d}", f"team{i:02d}")
        for i in range(25)
    ]
    await directory.upsert_subscriptions(harness.bot.db, rows, actor="test")
    await directory.grant_role(harness.bot.db, ADMIN, "admin", None, actor="test")
    for row in rows:
        status, body = await harness.command(f"set {row.alias} {NEW_PARTNER} growth", ADMIN)
        assert status == 200 and "Request #" in body["text"], body
    blocks = await opened(harness, OWNER2)
    assert len(blocks) <= 100
    waiting = part(blocks, "Waiting for your approval") or []
    assert len(buttons(waiting)) == 2 * 10
    assert "and 15 more — `/dpor pending`" in text(waiting)
    assert "and 7 more — `/dpor list`" in text(part(blocks, "Subscriptions you own") or [])
    mine = await opened(harness, ADMIN)
    assert "and 15 more — `/dpor pending`" in text(part(mine, "Your requests") or [])


async def test_dead_outbox_rows_are_shown_to_the_owners_concerned_only(harness_any_db: Harness) -> None:
    h = harness_any_db
    # Slack refuses the card's post for good: the row is given up on (dead).
    h.slack.fail("chat.postMessage", status=200, error="channel_not_found")
    status, body = await h.command(f"set prod {NEW_PARTNER} Contoso now runs our support", ADMIN)
    assert status == 200 and "Request #" in body["text"], body
    await h.settle()
    async with h.bot.db.read() as session:
        dead = (await session.scalars(select(OutboxMessage).where(OutboxMessage.status == "dead"))).all()
    assert [row.kind for row in dead] == ["card"]

    for owner in (OWNER, OWNER2):
        trouble = text(part(await opened(h, owner), "Needs attention") or [])
        assert "1 outbox row given up on" in trouble and "channel_not_found" in trouble, owner
        assert f"row {dead[0].id} (card)" in trouble
    assert "No outbox rows given up on" in text(part(await opened(h, DEV_OWNER), "Needs attention") or [])
    for user in (ADMIN, BYSTANDER):
        assert "given up on" not in text(await opened(h, user)), user


async def test_drift_found_by_reconcile_is_shown_to_its_owners_only(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install(monkeypatch, Replay())
    replay.otherwise = ok(NEW_PARTNER, "Contoso MSP")  # someone linked another partner outside the bot
    env = {"DPOR_PROVIDER": "azure", "DPOR_AZURE_CREDENTIALS_FILE": identities_file(tmp_path)}
    async for h in start_harness(sqlite_url, **env):
        async with h.bot.db.write(serial=False) as session:
            await session.execute(
                update(Subscription).where(Subscription.id == PROD).values(partner_id=OLD_PARTNER)
            )
            await session.execute(
                update(Subscription).where(Subscription.id == DEV).values(partner_id=NEW_PARTNER)
            )
        await reconcile.reconcile(h.bot.db, h.bot.providers, h.bot.policy)
        assert "partner.drift" in await h.audit_actions()

        trouble = text(part(await opened(h, OWNER), "Needs attention") or [])
        assert "Partner drift" in trouble and "Production EU" in trouble, trouble
        assert "*Fabrikam Consulting* (`1234566`)" in trouble and "*Contoso MSP* (`4977985`)" in trouble
        dev = text(part(await opened(h, DEV_OWNER), "Needs attention") or [])
        assert "No partner drift" in dev  # Dev's record matches what the provider reports
        for user in (ADMIN, BYSTANDER):
            assert "Partner drift" not in text(await opened(h, user)), user


async def test_messages_tab_publishes_nothing(harness: Harness) -> None:
    event = {"type": "app_home_opened", "user": OWNER, "channel": "D0OWNER", "tab": "messages"}
    status, _ = await harness.client.event(harness.url, event, team_id="T0DPOR")
    assert status == 200
    assert harness.home(OWNER) is None


async def test_url_verification_is_answered_when_signed_and_refused_when_not(harness: Harness) -> None:
    body = url_verification_body("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    status, answer = await harness.client.post(harness.url, body, content_type=JSON_CONTENT_TYPE)
    assert status == 200
    challenge = answer["challenge"] if isinstance(answer, dict) else json.loads(answer)["challenge"]
    assert challenge == "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"

    unsigned = url_verification_body("an-unsigned-challenge")
    status, answer = await harness.client.post(
        harness.url,
        unsigned,
        content_type=JSON_CONTENT_TYPE,
        headers={"X-Slack-Signature": "", "X-Slack-Request-Timestamp": ""},
    )
    assert status == 401
    assert "an-unsigned-challenge" not in str(answer)


async def test_a_home_slack_refuses_is_logged_and_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.slack.fail("views.publish", status=200, error="invalid_arguments")
    status, _ = await harness.home_opened(OWNER)
    assert status == 200  # the event is acknowledged: Slack would only send it again
    assert harness.home(OWNER) is None
    assert published(harness, "error") == 1 and published(harness) == 0
    assert any("publishing the Home of U0OWNER failed (ref " in r.getMessage() for r in caplog.records)
    await opened(harness, OWNER)  # the next opening publishes it
    assert published(harness) == 1


def test_manifest_enables_the_home_tab_and_its_event_on_the_commands_url() -> None:
    # No YAML parser among the dependencies: the lines Slack reads, checked as written.
    lines = [line.split("#")[0].strip() for line in (Path(__file__).parents[2] / "manifest.yaml").open()]
    assert "home_tab_enabled: true" in lines and "- app_home_opened" in lines
    urls = {line.split(": ", 1)[1] for line in lines if line.startswith(("url:", "request_url:"))}
    assert lines.count("request_url: https://dpor.example.com/slack/events") == 2
    assert urls == {"https://dpor.example.com/slack/events"}
