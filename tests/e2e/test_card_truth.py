"""Cards that stay true: every approval with its time, the previous and the new partner once decided, no
expiry line on a decided card, one reply per step in the card's thread, Slack's date tokens everywhere,
and cancellations and expiries announced where the subscription is watched."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from bot.providers.ledger import LedgerProvider
from tests.harness import ADMIN, APPROVALS, NEW_PARTNER, NOTIFY, OWNER, OWNER2, Harness

DATE = r"<!date\^[0-9]+\^\{date_short_pretty\} \{time\}\|[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2} UTC>"


def shown(h: Harness, card_ts: str) -> str:
    return json.dumps(h.slack.message(APPROVALS, card_ts).blocks)


def steps(h: Harness, card_ts: str) -> list[str]:
    """The replies in the card's thread, oldest first."""
    return [m.text for m in h.slack.messages(APPROVALS) if m.thread_ts == card_ts]


async def eventually(check, within: float = 15.0) -> None:
    for _ in range(int(within / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not in time")


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUIRED_APPROVALS": "2", "DPOR_DM_APPROVERS_MAX": "0"}])
async def test_two_approvals_then_applied(harness_any_db: Harness) -> None:
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} Contoso runs support now", ADMIN)
    card = await h.card(1)
    pending = shown(h, card.ts)
    assert "*Current partner*" in pending and "Previous partner" not in pending
    assert "Expires <!date^" in pending

    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    await h.settle()
    assert re.search(rf"1 of 2 approvals \(<@{OWNER}> {DATE}\)", shown(h, card.ts))
    assert (await h.click("dpor_approve", 1, OWNER2))[0] == 200
    await h.settle()
    assert (await h.request(1)).status == "applied"

    final = shown(h, card.ts)
    # Both approvers, each with the time of their approval, as Slack date tokens.
    assert re.search(rf"Applied\* at {DATE} \(approved by <@{OWNER}> {DATE}, <@{OWNER2}> {DATE}\)", final), (
        final
    )
    assert "*Previous partner*" in final and "*New partner*" in final and "Contoso MSP" in final
    assert "Current partner" not in final and "Expires" not in final
    assert final.count(" UTC") == final.count(" UTC>")  # no time outside a date token

    # The requester's DM names both approvers too, not only the last.
    told = [m.text for m in h.slack.messages(h.slack.dm_channel(ADMIN))]
    assert any(f"was approved by <@{OWNER}> and <@{OWNER2}>;" in text for text in told), told

    replies = steps(h, card.ts)
    assert len(replies) == 3, replies
    assert f"has approval 1 of 2, from <@{OWNER}>." in replies[0]
    assert f"has approval 2 of 2, from <@{OWNER2}>." in replies[1]
    assert "was applied: the partner of record is now Contoso MSP (4977985)." in replies[2]

    # A refusal written by the bot keeps its date token and is still escaped otherwise.
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    await h.settle()
    refusal = h.slack.ephemerals(OWNER)[-1].text
    assert re.search(rf"Request #1 was already approved and applied by <@{OWNER2}> at {DATE}\.", refusal), (
        refusal
    )
    assert "&lt;" not in refusal


@pytest.mark.parametrize("bot_env", [{"DPOR_OUTBOX_MAX_ATTEMPTS": "1", "DPOR_DM_APPROVERS_MAX": "0"}])
async def test_failed_then_retried_steps_in_the_thread(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    real = LedgerProvider.apply
    calls = []

    async def flaky(self: LedgerProvider, subscription_id: str, partner_id: str):
        calls.append(partner_id)
        if len(calls) == 1:
            raise RuntimeError("provider bug")
        return await real(self, subscription_id, partner_id)

    monkeypatch.setattr(LedgerProvider, "apply", flaky)
    await h.command(f"set prod {NEW_PARTNER} will fail once", ADMIN)
    card = await h.card(1)
    await h.click("dpor_approve", 1, OWNER)
    await h.settle()
    assert (await h.request(1)).status == "failed"
    failed = shown(h, card.ts)
    assert re.search(rf"An owner can retry until {DATE}", failed) and "Expires" not in failed
    assert f"Approved by <@{OWNER}> <!date^" in failed

    await h.click("dpor_retry", 1, OWNER2)
    await h.settle()
    assert (await h.request(1)).status == "applied"
    replies = steps(h, card.ts)
    assert len(replies) == 4, replies
    assert "has approval 1 of 1" in replies[0]
    assert "could not be applied: unexpected error in the provider (RuntimeError)" in replies[1]
    assert f"is being applied again: <@{OWNER2}> retried it." in replies[2]
    assert "was applied" in replies[3]


@pytest.mark.parametrize(
    "bot_env", [{"DPOR_REQUEST_TTL": "1.5", "DPOR_SWEEP_INTERVAL": "0.1", "DPOR_DM_APPROVERS_MAX": "0"}]
)
async def test_expired_card_thread_and_channels(harness_any_db: Harness) -> None:
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} nobody answers", ADMIN)
    card = await h.card(1)

    async def expired() -> bool:
        return (await h.request(1)).status == "expired"

    await eventually(expired)
    await h.settle()
    final = shown(h, card.ts)
    assert final.count("Expired") == 1 and "Expires" not in final, final
    assert re.search(rf"Expired\* {DATE} without a decision", final), final
    assert "*Previous partner*" in final
    (reply,) = steps(h, card.ts)
    assert "expired without a decision" in reply
    announced = [m.text for m in h.slack.messages(NOTIFY)]
    assert (
        len(announced) == 1 and "Request #1" in announced[0] and "expired without a decision" in announced[0]
    )


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])
async def test_cancellation_is_announced_and_its_refusal_dated(harness_any_db: Harness) -> None:
    h = harness_any_db
    await h.command(f"set prod {NEW_PARTNER} changed my mind", ADMIN)
    card = await h.card(1)
    status, body = await h.command("cancel 1", ADMIN)
    assert status == 200 and "cancelled" in body["text"]
    await h.settle()
    announced = [m.text for m in h.slack.messages(NOTIFY)]
    assert len(announced) == 1 and "Request #1" in announced[0], announced
    assert f"was cancelled by <@{ADMIN}>." in announced[0]
    (reply,) = steps(h, card.ts)
    assert f"was cancelled by <@{ADMIN}>." in reply
    final = shown(h, card.ts)
    assert "Cancelled" in final and "Expires" not in final and "Current partner" not in final

    # Cancelling again: the answer dates the cancellation with Slack's token, the rest escaped.
    status, body = await h.command("cancel 1", ADMIN)
    text = json.dumps(body)
    assert re.search(rf"was already cancelled by <@{ADMIN}> at {DATE}", body["text"]), text
    assert "&lt;!date" not in text
    # Only the bot's own tokens are kept: a ping typed by the user stays escaped.
    status, body = await h.command("cancel <!channel>", ADMIN)
    assert "not a request number" in body["text"] and "<!channel>" not in body["text"], body
