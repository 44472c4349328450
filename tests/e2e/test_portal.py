"""The portal provider over signed HTTP: DPOR is set by a person in the Azure portal and attested in chat.

Approval leaves the request applying with the portal steps and two buttons on the card; a bystander's
Done is refused inline; an owner's Done with a note applies it (audited as attested, on the card, in the
export); Could not fails it with the reason, and Retry shows the steps again; a reminder comes while it
waits; reconcile lists the subscription as attested, with who and when.
"""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from sqlalchemy import select

from bot import audit, reconcile
from bot.providers import Providers
from storage.models import AuditEvent, OutboxMessage, Subscription
from tests.harness import (
    ADMIN,
    APPROVALS,
    BYSTANDER,
    DEV,
    NEW_PARTNER,
    OWNER,
    OWNER2,
    PROD,
    Harness,
    eventually,
)


@pytest.fixture
def bot_env() -> dict[str, Any]:
    return {"DPOR_PROVIDER": "portal"}


NOTE = "Set by <@U0OWNER2> & checked: the portal said <b>Contoso MSP</b> <!channel>"
NOTE_SHOWN = (
    "Set by &lt;@U0OWNER2&gt; &amp; checked: the portal said &lt;b&gt;Contoso MSP&lt;/b&gt; &lt;!channel&gt;"
)


def note(text: str) -> dict[str, Any]:
    return {"note": {"note": {"type": "plain_text_input", "value": text}}}


def reason(text: str) -> dict[str, Any]:
    return {"reason": {"reason": {"type": "plain_text_input", "value": text}}}


async def approved(h: Harness) -> int:
    _, answer = await h.command(f"set prod {NEW_PARTNER} EA subscription, DPOR in the portal", ADMIN)
    assert "is open" in answer["text"], answer
    await h.settle()
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    await h.settle()
    return 1


async def events(h: Harness, action: str) -> list[AuditEvent]:
    async with h.bot.db.read() as session:
        found = await session.scalars(
            select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        )
        return list(found.all())


def buttons(blocks: list[dict]) -> list[tuple[str, str]]:
    return [(e["action_id"], e["value"]) for b in blocks if b["type"] == "actions" for e in b["elements"]]


async def test_approve_then_an_owner_attests_done_in_the_portal(harness_any_db: Harness) -> None:
    h = harness_any_db
    rid = await approved(h)
    req = await h.request(rid)
    assert req.status == "applying" and req.result["awaiting"] == "attestation"
    (started,) = await events(h, "apply.started")
    assert started.data["awaiting"] == "attestation" and started.data["provider"] == "portal"
    async with h.bot.db.read() as session:
        rows = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "apply"))).all()
    assert [r.status for r in rows] == ["done"]  # the apply row is done: a person finishes it

    card = await h.card(rid)
    text = json.dumps(card.blocks)
    assert "Waiting for the Azure portal" in text and "Partner information" in text
    assert PROD in text and f"Partner ID `{NEW_PARTNER}`" in text and "*Contoso MSP*" in text
    assert "https://portal.azure.com" in text
    assert buttons(card.blocks) == [("dpor_portal_done", "1"), ("dpor_portal_failed", "1")]

    # A bystander may open the form, but the submission is refused inline and writes only the refusal.
    assert (await h.click("dpor_portal_done", rid, BYSTANDER))[0] == 200
    form = h.modal(BYSTANDER)
    assert form["callback_id"] == "dpor_portal_done" and json.loads(form["private_metadata"]) == {
        "request": "1"
    }
    (block,) = [b for b in form["blocks"] if b["type"] == "input"]
    assert (
        block["block_id"] == block["element"]["action_id"] == "note" and block["element"]["max_length"] == 500
    )
    before = await h.counts()
    status, answer = await h.submit(BYSTANDER, note("I did it"))
    assert status == 200 and answer["response_action"] == "errors"
    assert "Only an owner of subscription Production EU" in answer["errors"]["note"]
    after = await h.counts()
    assert (
        after["audit_events"] == before["audit_events"] + 1
        and (await h.audit_actions())[-1] == "approval.denied"
    )
    assert (await h.request(rid)).status == "applying"

    # An owner with an empty note is told to say something; with a note, the change is applied.
    await h.click("dpor_portal_done", rid, OWNER2)
    _, answer = await h.submit(OWNER2, note("   "))
    assert "Say who made the change" in answer["errors"]["note"]
    status, answer = await h.submit(OWNER2, note(NOTE))
    assert status == 200 and not answer
    await h.settle()
    req = await h.request(rid)
    assert req.status == "applied" and req.result["attested"] is True and req.result["attested_by"] == OWNER2
    async with h.bot.db.read() as session:
        assert (await session.get(Subscription, PROD)).partner_id == NEW_PARTNER

    out = io.StringIO()
    await audit.export(h.bot.db, out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    (done,) = [e for e in exported if e["action"] == "apply.succeeded"]
    assert done["actor"] == OWNER2 and done["data"]["attested"] is True
    assert done["data"]["note"] == NOTE and done["data"]["attested_by"] == OWNER2
    assert done["data"]["partner_id"] == NEW_PARTNER
    assert (await audit.verify(h.bot.db)).ok

    text = json.dumps((await h.card(rid)).blocks)
    assert "Applied" in text and f"Attested by <@{OWNER2}>: {NOTE_SHOWN}" in text
    assert "dpor_portal_done" not in text
    assert [m for m in h.slack.messages(h.slack.dm_channel(ADMIN)) if "was applied" in m.text]
    for call in h.slack.calls:  # the note cannot ping anyone
        assert "<!channel>" not in json.dumps(call.params)

    # Done again on the stale card: refused inline, nothing moves.
    await h.click("dpor_portal_done", rid, OWNER)
    _, answer = await h.submit(OWNER, note("again"))
    assert "already approved and applied" in answer["errors"]["note"]


async def test_could_not_fails_it_and_retry_shows_the_steps_again(harness: Harness) -> None:
    h = harness
    rid = await approved(h)
    assert (await h.click("dpor_portal_failed", rid, OWNER))[0] == 200
    form = h.modal(OWNER)
    assert form["callback_id"] == "dpor_portal_failed"
    assert [b["block_id"] for b in form["blocks"] if b["type"] == "input"] == ["reason"]
    _, answer = await h.submit(OWNER, reason("x" * 501))
    assert "501 characters" in answer["errors"]["reason"]
    status, answer = await h.submit(OWNER, reason("The portal says the subscription is not EA"))
    assert status == 200 and not answer
    await h.settle()
    req = await h.request(rid)
    assert req.status == "failed" and "not EA" in req.error
    (failed,) = await events(h, "apply.failed")
    assert failed.actor == OWNER and failed.data["reason"] == "The portal says the subscription is not EA"
    card = await h.card(rid)
    assert buttons(card.blocks) == [("dpor_retry", "1")] and "not EA" in json.dumps(card.blocks)
    # A Done form left open on the old card is refused once the request failed, and says what to do.
    await h.click("dpor_portal_done", rid, OWNER2)
    _, answer = await h.submit(OWNER2, note("done after all"))
    assert "already failed" in answer["errors"]["note"] and "Retry" in answer["errors"]["note"]

    assert (await h.click("dpor_retry", rid, OWNER2))[0] == 200
    await h.settle()
    req = await h.request(rid)
    assert req.status == "applying" and req.result["awaiting"] == "attestation"
    card = await h.card(rid)
    assert buttons(card.blocks) == [("dpor_portal_done", "1"), ("dpor_portal_failed", "1")]
    assert "Partner information" in json.dumps(card.blocks)

    await h.click("dpor_portal_done", rid, OWNER)
    status, answer = await h.submit(OWNER, note("Done by the EA admin; the portal showed Contoso MSP"))
    assert status == 200 and not answer
    await h.settle()
    assert (await h.request(rid)).status == "applied"
    assert [e.action for e in await events(h, "apply.succeeded")] == ["apply.succeeded"]


async def test_a_portal_form_slack_did_not_open_is_said(harness: Harness) -> None:
    h = harness
    rid = await approved(h)
    before = await h.counts()
    h.slack.fail("views.open", status=200, error="expired_trigger_id")  # the trigger is over 3 s old
    assert (await h.click("dpor_portal_done", rid, OWNER2))[0] == 200
    await eventually(lambda: bool(h.slack.ephemerals(OWNER2)))  # said once Slack has its answer
    (told,) = [e.text for e in h.slack.ephemerals(OWNER2)]
    assert "did not open" in told and "Click Done in the portal again" in told
    await h.settle()
    assert await h.counts() == before
    assert (await h.request(rid)).status == "applying"


@pytest.mark.parametrize(
    "bot_env",
    [{"DPOR_PROVIDER": "portal", "DPOR_REMIND_AFTER": "1.5", "DPOR_SWEEP_INTERVAL": "0.1"}],
)
async def test_a_reminder_while_it_awaits_the_portal_names_the_owners(harness_any_db: Harness) -> None:
    h = harness_any_db
    rid = await approved(h)
    card = await h.card(rid)

    def reminders() -> list[str]:
        return [m.text for m in h.slack.messages(APPROVALS) if m.thread_ts == card.ts and ":bell:" in m.text]

    for _ in range(300):
        if reminders():
            break
        await asyncio.sleep(0.05)
    (reminder,) = reminders()
    assert f"Request #{rid}" in reminder and "Azure portal" in reminder and "Done in the portal" in reminder
    assert f"<@{OWNER}>" in reminder and f"<@{OWNER2}>" in reminder and f"<@{ADMIN}>" not in reminder
    await asyncio.sleep(0.5)
    assert len(reminders()) == 1  # not at every sweep...
    for _ in range(300):
        if len(reminders()) > 1:
            break
        await asyncio.sleep(0.05)
    assert len(reminders()) == 2  # ...but again after DPOR_REMIND_AFTER, until it is done


async def test_reconcile_lists_an_attested_subscription_with_who_and_when(harness: Harness) -> None:
    h = harness
    rid = await approved(h)
    await h.click("dpor_portal_done", rid, OWNER)
    await h.submit(OWNER, note("Done; the portal showed Contoso MSP"))
    await h.settle()
    findings = await reconcile.reconcile(h.bot.db, Providers(h.bot.settings, h.bot.db), h.bot.policy)
    by_id = {f.subscription_id: f for f in findings}
    prod = by_id[PROD]
    (applied,) = await events(h, "apply.succeeded")
    assert prod.status == "attested" and prod.provider == "portal"
    assert prod.observed == prod.recorded == NEW_PARTNER
    assert prod.message == f"attested by {OWNER} at {applied.at.isoformat(timespec='seconds')}"
    assert by_id[DEV].status == "unchecked" and "no owner has attested" in by_id[DEV].message
    assert "partner.drift" not in await h.audit_actions()
