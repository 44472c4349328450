"""Clicks on the approval card: who may decide, at click time, and what a refused click leaves behind."""

from __future__ import annotations

import asyncio
import json

import pytest

from bot import directory
from tests.harness import ADMIN, APPROVALS, BYSTANDER, DEV_OWNER, NEW_PARTNER, OWNER, OWNER2, Harness


async def open_request(harness: Harness, reason: str = "new MSP") -> int:
    status, body = await harness.command(f"set prod {NEW_PARTNER} {reason}", ADMIN)
    assert status == 200 and "Request #" in body["text"], body
    rid = int(body["text"].split("Request #")[1].split()[0])
    await harness.card(rid)
    return rid


async def refused(harness: Harness, rid: int, user: str, expected: str, **kw) -> None:
    """The click is acked, answered privately with `expected`, audited, and changes nothing else."""
    before = await harness.request(rid)
    denied_before = (await harness.audit_actions()).count("approval.denied")
    status, _ = await harness.click("dpor_approve", rid, user, **kw)
    assert status == 200
    await harness.settle()
    answers = [e for e in harness.slack.ephemerals(user)]
    assert answers, f"no private answer for {user}"
    assert expected in answers[-1].text, answers[-1].text
    after = await harness.request(rid)
    assert (after.status, after.decided_by) == (before.status, before.decided_by)
    assert (await harness.audit_actions()).count("approval.denied") == denied_before + 1


async def test_bystander_is_refused(harness: Harness) -> None:
    rid = await open_request(harness)
    await refused(harness, rid, BYSTANDER, "Only an owner")


async def test_owner_of_another_subscription_is_refused(harness: Harness) -> None:
    rid = await open_request(harness)
    await refused(harness, rid, DEV_OWNER, "Only an owner")


async def test_requester_cannot_approve_own_request(harness: Harness) -> None:
    await directory.grant_role(harness.bot.db, ADMIN, "owner", "prod", actor="test")
    rid = await open_request(harness)
    await refused(harness, rid, ADMIN, "another owner must approve")


async def test_revoked_owner_is_refused(harness: Harness) -> None:
    rid = await open_request(harness)
    # The card was posted while OWNER held the role; the role is gone by the time they click.
    await directory.revoke_role(harness.bot.db, OWNER, "owner", "prod", actor="test")
    await refused(harness, rid, OWNER, "Only an owner")


async def test_payload_from_another_team_is_refused(harness: Harness) -> None:
    rid = await open_request(harness)
    await refused(harness, rid, OWNER, "another Slack workspace", team_id="T0OTHER")


async def test_reject_updates_card_and_tells_requester(harness: Harness) -> None:
    rid = await open_request(harness)
    status, _ = await harness.click("dpor_reject", rid, OWNER)
    assert status == 200
    # Reject asks why (tests/e2e/test_reject_reason.py); the submitted reason decides.
    why = {"reason": {"reason": {"type": "plain_text_input", "value": "wrong partner"}}}
    assert (await harness.submit(OWNER, why))[0] == 200
    await harness.settle()
    assert (await harness.request(rid)).status == "rejected"
    card = await harness.card(rid)
    assert "Rejected" in json.dumps(card.blocks) and "dpor_approve" not in json.dumps(card.blocks)
    assert any("rejected" in m.text for m in harness.slack.messages(harness.slack.dm_channel(ADMIN)))


async def test_double_click_decides_once(harness: Harness) -> None:
    rid = await open_request(harness)
    first, second = await asyncio.gather(
        harness.click("dpor_approve", rid, OWNER), harness.click("dpor_approve", rid, OWNER)
    )
    assert first[0] == second[0] == 200
    await harness.settle()
    actions = await harness.audit_actions()
    assert actions.count("request.approved") == 1
    assert actions.count("apply.succeeded") == 1
    assert actions.count("approval.denied") == 1
    assert "already" in harness.slack.ephemerals(OWNER)[-1].text


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUIRED_APPROVALS": "2"}])
async def test_two_approvals_show_progress(harness: Harness) -> None:
    rid = await open_request(harness)
    await harness.click("dpor_approve", rid, OWNER)
    await harness.settle()
    card = await harness.card(rid)
    assert "1 of 2 approvals" in json.dumps(card.blocks)
    assert (await harness.request(rid)).status == "pending"
    await harness.click("dpor_approve", rid, OWNER2)
    await harness.settle()
    assert (await harness.request(rid)).status == "applied"


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUEST_TTL": "1s"}])
async def test_click_on_expired_request(harness: Harness) -> None:
    rid = await open_request(harness)
    await asyncio.sleep(1.1)
    status, _ = await harness.click("dpor_approve", rid, OWNER)
    assert status == 200
    await harness.settle()
    assert (await harness.request(rid)).status == "expired"
    assert "expired" in harness.slack.ephemerals(OWNER)[-1].text
    card = await harness.card(rid)
    assert "Expired" in json.dumps(card.blocks) and "dpor_approve" not in json.dumps(card.blocks)
    assert any("expired" in m.text for m in harness.slack.messages(harness.slack.dm_channel(ADMIN)))


async def test_unknown_request_value_is_refused(harness: Harness) -> None:
    await open_request(harness)
    before = await harness.counts()
    status, _ = await harness.click("dpor_approve", "99999", OWNER, message_ts="1.000001")
    assert status == 200
    await harness.settle()
    assert "no request #99999" in harness.slack.ephemerals(OWNER)[-1].text
    after = await harness.counts()
    assert after["change_requests"] == before["change_requests"]
    assert after["audit_events"] == before["audit_events"] + 1  # approval.denied


async def test_approval_channel_card_has_confirm_dialog(harness: Harness) -> None:
    rid = await open_request(harness)
    card = await harness.card(rid)
    assert card.channel == APPROVALS
    buttons = [e for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
    approve = next(b for b in buttons if b["action_id"] == "dpor_approve")
    reject = next(b for b in buttons if b["action_id"] == "dpor_reject")
    assert approve["style"] == "primary" and "confirm" in approve and approve["value"] == str(rid)
    assert reject["style"] == "danger" and reject["value"] == str(rid)
