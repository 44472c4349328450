"""Reject with a reason, over signed HTTP: the card's Reject opens a form and writes nothing; the submitted
reason is on the card, in the requester's DM, in the channel notification and in `request.rejected`'s
audit data, escaped wherever Slack shows it; the click-time checks run again and refuse inline."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from storage.models import AuditEvent
from tests.harness import ADMIN, NEW_PARTNER, NOTIFY, OWNER, OWNER2, Harness, eventually

REASON = "Contoso <!channel> is not our MSP & never was"
SHOWN = "Reason: Contoso &lt;!channel&gt; is not our MSP &amp; never was"


def why(text: str) -> dict:
    return {"reason": {"reason": {"type": "plain_text_input", "value": text}}}


async def open_request(h: Harness) -> int:
    _, answer = await h.command(f"set prod {NEW_PARTNER} new MSP", ADMIN)
    assert "is open" in answer["text"], answer
    await h.settle()
    return 1


async def test_reject_opens_a_form_and_writes_nothing(harness: Harness) -> None:
    rid = await open_request(harness)
    before = await harness.counts()
    status, _ = await harness.click("dpor_reject", rid, OWNER)
    assert status == 200
    form = harness.modal(OWNER)
    assert form["callback_id"] == "dpor_reject" and json.loads(form["private_metadata"]) == {"request": "1"}
    (block,) = [b for b in form["blocks"] if b["type"] == "input"]
    assert block["block_id"] == block["element"]["action_id"] == "reason" and not block.get("optional")
    assert block["element"]["max_length"] == 500
    await harness.settle()
    assert await harness.counts() == before
    assert (await harness.request(rid)).status == "pending"


async def test_a_reject_form_slack_did_not_open_is_said_where_it_was_clicked(harness: Harness) -> None:
    h = harness
    rid = await open_request(h)
    before = await h.counts()
    # Slack refuses the trigger (it opens one view, within 3 s of the click): on the card, the clicker is
    # told privately that nothing happened...
    h.slack.fail("views.open", status=200, error="expired_trigger_id")
    assert (await h.click("dpor_reject", rid, OWNER))[0] == 200
    assert h.surfaces.modal(OWNER) is None
    await eventually(lambda: bool(h.slack.ephemerals(OWNER)))  # said once Slack has its answer
    (told,) = [e.text for e in h.slack.ephemerals(OWNER)]
    assert "did not open" in told and "Click Reject again" in told
    # ...and on the Home, on top of the Home, which still offers the request.
    await h.home_opened(OWNER)
    h.slack.fail("views.open", status=200, error="expired_trigger_id")
    published = h.published()
    assert (await h.click_home("dpor_reject", rid, OWNER))[0] == 200
    await h.republished(published)
    home = json.dumps(h.home(OWNER))
    assert "did not open" in home and "dpor_reject" in home
    await h.settle()
    assert await h.counts() == before
    assert (await h.request(rid)).status == "pending"


async def test_the_reason_reaches_the_card_the_dm_the_notification_and_the_audit(
    harness_any_db: Harness,
) -> None:
    h = harness_any_db
    rid = await open_request(h)
    await h.click("dpor_reject", rid, OWNER)
    status, answer = await h.submit(OWNER, why(REASON))
    assert status == 200 and not answer  # the form closes
    assert h.surfaces.modal(OWNER) is None
    await h.settle()
    req = await h.request(rid)
    assert (req.status, req.decided_by, req.decision_note) == ("rejected", OWNER, REASON)
    async with h.bot.db.read() as session:
        event = (
            await session.scalars(select(AuditEvent).where(AuditEvent.action == "request.rejected"))
        ).one()
    assert (event.actor, event.request_id, event.data["reason"]) == (OWNER, rid, REASON)

    card = json.dumps((await h.card(rid)).blocks)
    assert "Rejected" in card and SHOWN in card and "dpor_approve" not in card
    dms = [m for m in h.slack.messages(h.slack.dm_channel(ADMIN)) if "rejected" in m.text]
    assert dms and SHOWN in dms[-1].text
    notes = [m for m in h.slack.messages(NOTIFY) if "rejected" in m.text]
    assert notes and SHOWN in notes[-1].text
    for call in h.slack.calls:  # nothing the bot sent Slack can ping the channel
        assert "<!channel>" not in json.dumps(call.params)


async def test_a_refusal_at_submission_comes_back_inline(harness: Harness) -> None:
    h = harness
    rid = await open_request(h)
    await h.click("dpor_reject", rid, OWNER)  # OWNER takes their time to say why...
    assert (await h.click("dpor_approve", rid, OWNER2))[0] == 200  # ...while OWNER2 approves
    await h.settle()
    before = await h.counts()
    status, answer = await h.submit(OWNER, why("too late"))
    assert status == 200 and answer["response_action"] == "errors"
    error = answer["errors"]["reason"]
    assert f"Request #{rid} was already approved" in error and "another user (U0OWNER2)" in error
    assert "<" not in error
    assert h.modal(OWNER)["callback_id"] == "dpor_reject"  # still open
    await h.settle()
    after = await h.counts()
    assert after["change_requests"] == before["change_requests"]
    assert after["audit_events"] == before["audit_events"] + 1  # approval.denied, as for a click
    assert (await h.audit_actions())[-1] == "approval.denied"
    assert (await h.request(rid)).status in ("approved", "applying", "applied")
    assert not [e for e in h.slack.ephemerals(OWNER) if "already" in e.text]  # inline, not ephemeral


async def test_only_an_owner_may_reject_checked_at_submission(harness: Harness) -> None:
    h = harness
    rid = await open_request(h)
    await h.click("dpor_reject", rid, OWNER)
    # OWNER loses the role while the form is open: the submission reads roles now.
    await h.command("role revoke <@U0OWNER> owner prod", OWNER2)
    await h.settle()
    _, answer = await h.submit(OWNER, why("no"))
    assert answer["response_action"] == "errors" and "Only an owner" in answer["errors"]["reason"]
    assert (await h.request(rid)).status == "pending"


async def test_an_empty_or_long_reason_is_refused_and_writes_nothing(harness: Harness) -> None:
    h = harness
    rid = await open_request(h)
    await h.click("dpor_reject", rid, OWNER)
    before = await h.counts()
    for text, words in (("  \n ", "Say why"), ("x" * 501, "501 characters")):
        status, answer = await h.submit(OWNER, why(text))
        assert status == 200 and words in answer["errors"]["reason"]
    await h.settle()
    assert await h.counts() == before
    assert (await h.request(rid)).status == "pending"
    assert "dpor_reject" in json.dumps((await h.card(rid)).blocks)


async def test_reject_on_the_home_asks_why_and_republishes_the_home(harness: Harness) -> None:
    h = harness
    rid = await open_request(h)
    assert (await h.home_opened(OWNER))[0] == 200
    assert "dpor_reject" in json.dumps(h.home(OWNER))
    before = await h.counts()
    assert (await h.click_home("dpor_reject", rid, OWNER))[0] == 200
    assert json.loads(h.modal(OWNER)["private_metadata"]) == {"request": str(rid), "home": True}
    await h.settle()
    assert await h.counts() == before  # the click wrote nothing
    published = h.published()
    status, answer = await h.submit(OWNER, why(REASON))
    assert status == 200 and not answer
    assert (await h.request(rid)).decision_note == REASON
    await h.republished(published)
    home = json.dumps(h.home(OWNER))
    assert "dpor_reject" not in home and "dpor_approve" not in home  # nothing waits for OWNER any more


async def test_a_slow_home_does_not_hold_up_the_forms_answer(harness: Harness) -> None:
    """Slack waits 3 s for the answer to a submission, then shows an error and keeps the form open though
    the request was rejected: the Home it came from is published after the answer, not before."""
    h = harness
    rid = await open_request(h)
    await h.home_opened(OWNER)
    await h.click_home("dpor_reject", rid, OWNER)
    h.slack.hold("views.publish")  # Slack slow to publish (or a 429 whose Retry-After the client waits out)
    try:
        status, answer = await asyncio.wait_for(h.submit(OWNER, why("no")), 2)
        assert status == 200 and not answer
        assert (await h.request(rid)).status == "rejected"
        await h.slack.wait_held("views.publish")
    finally:
        h.slack.release("views.publish")
    await h.slack.wait_for("views.publish", 2)  # then the Home shows it decided
    assert "dpor_reject" not in json.dumps(h.home(OWNER))
