"""Requests that Slack did not sign, or signed too long ago, get 401 and write nothing."""

from __future__ import annotations

import time

from tests.harness import ADMIN, NEW_PARTNER, OWNER, Harness
from tests.slack import block_actions_body, slash_command_body


async def test_bad_signature_is_refused(harness: Harness) -> None:
    before = await harness.counts()
    body = slash_command_body(f"set prod {NEW_PARTNER}", user_id=ADMIN)
    status, _ = await harness.client.post(harness.url, body, headers={"X-Slack-Signature": "v0=" + "0" * 64})
    assert status == 401
    assert await harness.counts() == before


async def test_stale_timestamp_is_refused(harness: Harness) -> None:
    before = await harness.counts()
    body = slash_command_body(f"set prod {NEW_PARTNER}", user_id=ADMIN)
    # Correctly signed, but six minutes old: a replay.
    status, _ = await harness.client.post(harness.url, body, timestamp=int(time.time()) - 360)
    assert status == 401
    assert await harness.counts() == before


async def test_forged_click_is_refused(harness: Harness) -> None:
    status, _ = await harness.command(f"set prod {NEW_PARTNER}", ADMIN)
    assert status == 200
    await harness.settle()
    before = await harness.counts()
    click = block_actions_body("dpor_approve", "1", user_id=OWNER, channel_id="C0APPROVALS", message_ts="1.0")
    status, _ = await harness.client.post(harness.url, click, headers={"X-Slack-Signature": "v0=deadbeef"})
    assert status == 401
    assert await harness.counts() == before
    assert (await harness.request(1)).status == "pending"
