"""A signed `/dpor set`, an owner's Approve click, and everything Slack should see afterwards."""

from __future__ import annotations

import json

from tests.harness import ADMIN, APPROVALS, NEW_PARTNER, NOTIFY, OWNER, Harness


def blocks_text(blocks: list[dict]) -> str:
    return json.dumps(blocks)


async def test_set_approve_applied(harness: Harness) -> None:
    status, body = await harness.command(f"set prod {NEW_PARTNER} Contoso now runs our support", ADMIN)
    assert status == 200
    assert body["response_type"] == "ephemeral"
    assert "Request #1" in body["text"]

    card = await harness.card(1)
    assert card.channel == APPROVALS
    shown = blocks_text(card.blocks)
    assert "Contoso MSP" in shown and "Fabrikam Consulting" not in shown  # no current partner yet
    assert "dpor_approve" in shown and "dpor_reject" in shown
    assert "0 of 1 approvals" in shown

    status, _ = await harness.click("dpor_approve", 1, OWNER)
    assert status == 200
    await harness.slack.wait_for("chat.update", count=1)
    await harness.settle()

    req = await harness.request(1)
    assert req.status == "applied"
    final = harness.slack.message(APPROVALS, card.ts)
    assert "Applied" in blocks_text(final.blocks)
    assert "dpor_approve" not in blocks_text(final.blocks)

    dm = harness.slack.dm_channel(ADMIN)
    assert any("applied" in m.text for m in harness.slack.messages(dm))
    assert any("Contoso MSP" in m.text for m in harness.slack.messages(NOTIFY))

    status, body = await harness.command("show prod", ADMIN)
    assert NEW_PARTNER in json.dumps(body) and "Contoso MSP" in json.dumps(body)
    assert await harness.audit_actions() == [
        *["subscription.added"] * 2,
        *["partner.added"] * 2,
        *["role.granted"] * 4,
        "request.created",
        "request.approved",
        "apply.started",
        "apply.succeeded",
    ]


async def test_reason_mentioning_payload_reaches_the_bot(harness: Harness) -> None:
    # Bolt reads any form body containing "payload" as an interaction; the bot re-reads such commands.
    status, body = await harness.command(f"set prod {NEW_PARTNER} payload team migration", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert (await harness.request(1)).reason == "payload team migration"
