"""Reaching the owners a request needs: a DM each with the card's link, the cap, and reminders that name
the owners who have not approved yet; each person's DM channel opened once."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot import outbox
from bot.outbox import Undeliverable
from storage.models import OutboxMessage
from tests.harness import (
    ADMIN,
    APPROVALS,
    BYSTANDER,
    DEV_OWNER,
    NEW_PARTNER,
    OLD_PARTNER,
    OWNER,
    OWNER2,
    Harness,
)


def dms(h: Harness, user_id: str) -> list[str]:
    """What the bot wrote in its DM with `user_id`: each message's text and blocks."""
    return [m.text + json.dumps(m.blocks) for m in h.slack.messages(h.slack.dm_channel(user_id))]


def opened_for(h: Harness) -> list[str]:
    return [c.params.get("users") for c in h.slack.calls_to("conversations.open") if c.ok]


async def test_each_owner_but_the_requester_gets_a_dm_with_the_cards_link(harness_any_db: Harness) -> None:
    h = harness_any_db
    status, body = await h.command(f"set prod {NEW_PARTNER} Contoso takes over support", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert "2 owners were messaged directly" in body["text"], body["text"]
    card = await h.card(1)
    await h.settle()

    link = f"/archives/{APPROVALS}/p{card.ts.replace('.', '')}"
    for owner in (OWNER, OWNER2):  # the owner of prod and the owner of every subscription
        (dm,) = dms(h, owner)
        assert "Request #1" in dm and "needs an owner's approval" in dm and f"<@{ADMIN}> asked for it" in dm
        assert "Production EU" in dm and "Contoso MSP" in dm and "Contoso takes over support" in dm
        assert link in dm, dm
    for nobody in (ADMIN, BYSTANDER, DEV_OWNER):
        assert dms(h, nobody) == []
    # The link was asked for once the card was posted, never before, and once for both DMs.
    calls = [c.method for c in h.slack.calls if c.ok]
    assert calls.index("chat.postMessage") < calls.index("chat.getPermalink")
    assert [c.params["message_ts"] for c in h.slack.calls_to("chat.getPermalink")] == [card.ts]

    # Another request's card has a link of its own.
    status, body = await h.command(f"set dev {NEW_PARTNER} Contoso for dev too", DEV_OWNER)
    assert status == 200 and "Request #2" in body["text"], body
    second = await h.card(2)
    await h.settle()
    asked = [c.params["message_ts"] for c in h.slack.calls_to("chat.getPermalink")]
    assert asked == [card.ts, second.ts], asked
    assert f"/archives/{APPROVALS}/p{second.ts.replace('.', '')}" in dms(h, OWNER2)[-1]


async def test_an_owner_who_requests_is_not_asked_to_approve(harness: Harness) -> None:
    h = harness
    status, body = await h.command(f"set prod {NEW_PARTNER} we need Contoso", OWNER)
    assert status == 200 and "1 owner was messaged directly" in body["text"], body
    await h.card(1)
    await h.settle()
    assert len(dms(h, OWNER2)) == 1
    assert dms(h, OWNER) == []


async def test_an_owner_who_already_approved_gets_no_dm(harness: Harness) -> None:
    """The DM is decided at delivery: once the request is decided, an owner whose DM had not gone out yet
    is not asked any more (the DMs go one after the other, behind the card)."""
    h = harness
    h.slack.hold("chat.getPermalink")
    await h.command(f"set prod {NEW_PARTNER} quick", ADMIN)
    await h.slack.wait_held("chat.getPermalink")  # the first DM (to U0OWNER) is on its way
    assert (await h.click("dpor_approve", 1, OWNER2))[0] == 200
    h.slack.release("chat.getPermalink")
    await h.settle()
    assert (await h.request(1)).status == "applied"
    assert len(dms(h, OWNER)) == 1  # it was in flight
    assert not any("needs an owner's approval" in m for m in dms(h, OWNER2)), dms(h, OWNER2)


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "1"}])
async def test_more_owners_than_the_cap_means_the_channel_only(harness: Harness) -> None:
    h = harness
    status, body = await h.command(f"set prod {NEW_PARTNER} too many owners", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert "2 owners can approve it, more than the 1 dpor-bot messages directly" in body["text"], body
    assert "nobody was messaged" in body["text"]
    await h.card(1)
    await h.settle()
    assert opened_for(h) == [] and h.slack.calls_to("chat.getPermalink") == []
    assert dms(h, OWNER) == [] and dms(h, OWNER2) == []


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])
async def test_zero_turns_the_dms_off(harness: Harness) -> None:
    h = harness
    status, body = await h.command(f"set prod {NEW_PARTNER} no dms", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert "messaged" not in body["text"], body
    await h.card(1)
    await h.settle()
    assert opened_for(h) == [] and h.slack.calls_to("chat.getPermalink") == []


@pytest.mark.parametrize(
    "bot_env",
    [
        {
            "DPOR_REQUIRED_APPROVALS": "2",
            "DPOR_REMIND_AFTER": "1.5",
            "DPOR_SWEEP_INTERVAL": "0.1",
            "DPOR_DM_APPROVERS_MAX": "0",
        }
    ],
)
async def test_the_reminder_mentions_only_the_owners_who_have_not_approved(harness_any_db: Harness) -> None:
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} two owners needed", ADMIN)
    card = await h.card(1)
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200

    def reminders() -> list[str]:
        return [m.text for m in h.slack.messages(APPROVALS) if m.thread_ts == card.ts and ":bell:" in m.text]

    for _ in range(300):
        if reminders():
            break
        await asyncio.sleep(0.05)
    (reminder,) = reminders()
    assert "Request #1" in reminder and "(1 of 2 approvals)" in reminder
    assert f"Waiting on <@{OWNER2}>." in reminder
    assert f"<@{OWNER}>" not in reminder and f"<@{ADMIN}>" not in reminder


async def test_a_persons_dm_channel_is_opened_once_and_again_only_when_slack_refuses_it(
    harness_any_db: Harness,
) -> None:
    """Every DM goes to the person's DM channel; conversations.open is asked once per person, whatever the
    number of DMs, and asked again only when Slack refuses the remembered channel for good."""
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} first", ADMIN)  # asks both owners
    await h.card(1)
    await h.settle()
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    for _ in range(3):  # the apply, the rows it queued, the steps behind the card
        await h.settle()
    assert (await h.request(1)).status == "applied"  # the requester was told in a DM
    await h.command(f"set prod {OLD_PARTNER} second", ADMIN)  # asks both owners again
    await h.card(2)
    await h.settle()
    assert len(dms(h, OWNER)) == len(dms(h, OWNER2)) == 2 and len(dms(h, ADMIN)) >= 1
    assert sorted(opened_for(h)) == sorted(set(opened_for(h))), opened_for(h)  # once per person

    deliverer = h.bot.worker.deliverers[outbox.DM].__self__  # type: ignore[union-attr]
    payload = {"user_id": OWNER2, "request_id": 2, "event": "approval"}
    row = OutboxMessage(kind=outbox.DM, key=f"dm:{OWNER2}", payload=payload)
    opened = len(opened_for(h))
    h.slack.fail("chat.postMessage", status=200, error="channel_not_found")  # the remembered channel
    await deliverer.dm(row)
    assert len(dms(h, OWNER2)) == 3  # delivered all the same...
    assert opened_for(h)[opened:] == [OWNER2]  # ...to the channel opened anew
    await deliverer.dm(row)
    assert len(dms(h, OWNER2)) == 4 and len(opened_for(h)) == opened + 1

    h.slack.fail("chat.postMessage", status=200, error="channel_not_found", times=2)
    with pytest.raises(Undeliverable) as refused:  # refused in the channel opened anew too: for good
        await deliverer.dm(row)
    assert refused.value.permanent and len(dms(h, OWNER2)) == 4
    opened = len(opened_for(h))
    h.slack.fail("chat.postMessage", status=429)  # for now only: the channel is kept, the row retried
    with pytest.raises(Undeliverable) as limited:
        await deliverer.dm(row)
    assert limited.value.rate_limited and len(opened_for(h)) == opened
