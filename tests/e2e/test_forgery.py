"""Forged, replayed and misdirected requests: refused, audited where a person was refused, nothing else."""

from __future__ import annotations

import json
import time

from tests.harness import ADMIN, DEV, DEV_OWNER, NEW_PARTNER, OWNER, Harness
from tests.slack import slash_command_body


async def open_prod_request(harness: Harness) -> int:
    status, body = await harness.command(f"set prod {NEW_PARTNER} forgery", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    await harness.settle()
    return 1


async def test_command_from_another_workspace_is_refused(harness: Harness) -> None:
    before = await harness.counts()
    status, body = await harness.command(f"set prod {NEW_PARTNER}", ADMIN, team_id="T0OTHER")
    assert status == 200 and "another Slack workspace" in body["text"]
    assert await harness.counts() == before


async def test_click_from_another_workspace_is_refused_and_audited(harness: Harness) -> None:
    rid = await open_prod_request(harness)
    await harness.click("dpor_approve", rid, OWNER, team_id="T0OTHER")
    await harness.settle()
    assert (await harness.request(rid)).status == "pending"
    assert (await harness.audit_actions())[-1] == "approval.denied"


async def test_value_pointing_at_another_subscriptions_request(harness: Harness) -> None:
    """An owner of `dev` clicks on a dev card whose value was rewritten to prod's request."""
    rid = await open_prod_request(harness)
    _, body = await harness.command(f"set {DEV} {NEW_PARTNER}", DEV_OWNER)
    assert "Request #2" in body["text"]
    await harness.settle()
    dev_card = await harness.card(2)
    await harness.click("dpor_approve", rid, DEV_OWNER, message_ts=dev_card.ts)
    await harness.settle()
    assert (await harness.request(rid)).status == "pending"
    assert (await harness.request(2)).status == "pending"
    assert "Only an owner" in harness.slack.ephemerals(DEV_OWNER)[-1].text
    assert (await harness.audit_actions())[-1] == "approval.denied"


async def test_click_on_cancelled_or_superseded_card(harness: Harness) -> None:
    rid = await open_prod_request(harness)
    old_card = await harness.card(rid)
    await harness.command(f"cancel {rid}", ADMIN)
    await harness.command("set prod 1234566 superseding", ADMIN)
    await harness.settle()
    await harness.click("dpor_approve", rid, OWNER, message_ts=old_card.ts)
    await harness.settle()
    assert (await harness.request(rid)).status == "cancelled"
    assert (await harness.request(2)).status == "pending"
    assert "already cancelled" in harness.slack.ephemerals(OWNER)[-1].text
    assert (await harness.audit_actions())[-1] == "approval.denied"


async def test_replayed_request_is_refused(harness: Harness) -> None:
    body = slash_command_body(f"set prod {NEW_PARTNER}", user_id=ADMIN)
    before = await harness.counts()
    status, _ = await harness.client.post(harness.url, body, timestamp=int(time.time()) - 301)
    assert status == 401
    assert await harness.counts() == before


async def test_oversized_body_is_refused(harness: Harness) -> None:
    body = slash_command_body(f"set prod {NEW_PARTNER} " + "x" * 2_000_000, user_id=ADMIN)
    before = await harness.counts()
    status, _ = await harness.client.post(harness.url, body)
    assert status == 413
    assert await harness.counts() == before


async def test_long_reason_is_refused_with_the_limit(harness: Harness) -> None:
    before = await harness.counts()
    _, body = await harness.command(f"set prod {NEW_PARTNER} " + "y" * 501, ADMIN)
    assert "501 characters" in body["text"] and "500" in body["text"]
    assert await harness.counts() == before
    assert json.dumps(body).count("y" * 100) == 0  # the reason is not echoed back
