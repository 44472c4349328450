"""A card Slack will not post (the bot is not in that channel) is not silent: the requester is told."""

from __future__ import annotations

from tests.harness import ADMIN, NEW_PARTNER, Harness


async def test_requester_hears_when_the_card_cannot_be_posted(harness: Harness) -> None:
    harness.slack.fail("chat.postMessage", status=200, error="not_in_channel")
    _, body = await harness.command(f"set prod {NEW_PARTNER} nowhere to post", ADMIN)
    assert "Request #1" in body["text"]
    await harness.settle()  # the card's row dies and queues the DM in one transaction
    dms = harness.slack.messages(harness.slack.dm_channel(ADMIN))
    assert any("has no approval card" in m.text for m in dms), [m.text for m in dms]
    assert (await harness.request(1)).card_ts is None
