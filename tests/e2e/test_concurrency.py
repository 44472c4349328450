"""Twenty owners click Approve on one card at once: one decision, one apply, one card update per state."""

from __future__ import annotations

import asyncio
import json

from bot import directory
from tests.harness import ADMIN, NEW_PARTNER, Harness


async def test_twenty_concurrent_approvals_decide_once(harness_any_db: Harness) -> None:
    harness = harness_any_db
    owners = [f"U0OWN{i:03d}" for i in range(20)]
    for owner in owners:
        await directory.grant_role(harness.bot.db, owner, "owner", "prod", actor="test")
    status, body = await harness.command(f"set prod {NEW_PARTNER} concurrency", ADMIN)
    assert status == 200, body
    card = await harness.card(1)
    await harness.settle()
    updates_before = len(harness.slack.calls_to("chat.update"))

    results = await asyncio.gather(
        *(harness.click("dpor_approve", 1, owner, message_ts=card.ts) for owner in owners)
    )
    assert [status for status, _ in results] == [200] * 20
    await harness.settle()

    actions = await harness.audit_actions()
    assert actions.count("request.approved") == 1
    assert actions.count("apply.started") == 1
    assert actions.count("apply.succeeded") == 1
    assert actions.count("approval.denied") == 19
    assert (await harness.request(1)).status == "applied"
    assert len(harness.slack.ephemerals()) == 19
    # The decision's card rows (approved, applying, applied) are rendered from the database, and a
    # render covers the rows committed before it: at most one update per state, never one per click.
    updates = harness.slack.calls_to("chat.update")[updates_before:]
    assert 1 <= len(updates) <= 3
    assert "Applied" in json.dumps(harness.slack.message(card.channel, card.ts).blocks)
