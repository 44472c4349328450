"""The set form over signed HTTP: the shortcut and `/dpor set` open it, its typeahead answers from the
database for whoever types, every refusal comes back on its field with nothing written, and a submitted
form opens the request the typed command would, through to an applied change."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from sqlalchemy import update

from bot import directory
from storage.models import Subscription
from tests.harness import (
    ADMIN,
    APPROVALS,
    BYSTANDER,
    DEV,
    DEV_OWNER,
    NEW_PARTNER,
    OLD_PARTNER,
    OWNER,
    OWNER2,
    PROD,
    Harness,
    eventually,
)

FIELDS = ["subscription", "partner", "reason"]


def picked(value: str) -> dict[str, Any]:
    return {
        "type": "external_select",
        "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
    }


def values(
    subscription: str | None = PROD, partner: str | None = NEW_PARTNER, reason: str | None = "x"
) -> dict:
    """Slack's state.values of the form, with what was picked (None: nothing picked or typed)."""
    out: dict[str, Any] = {
        "subscription": {
            "subscription": picked(subscription) if subscription else {"type": "external_select"}
        },
        "partner": {"partner": picked(partner) if partner else {"type": "external_select"}},
        "reason": {"reason": {"type": "plain_text_input", "value": reason}},
    }
    return out


async def options(h: Harness, user: str, action_id: str, typed: str) -> list[dict[str, Any]]:
    status, answer = await h.suggest(user, action_id, typed)
    assert status == 200
    for option in answer["options"]:
        assert 0 < len(option["text"]["text"]) <= 75 and len(option["value"]) <= 150
    return answer["options"]


async def test_the_shortcut_opens_the_form(harness: Harness) -> None:
    before = await harness.counts()
    status, _ = await harness.shortcut("dpor_set", ADMIN)
    assert status == 200
    (call,) = harness.slack.calls_to("views.open")
    assert call.ok
    form = harness.modal(ADMIN)
    assert form["callback_id"] == "dpor_set" and form["type"] == "modal"
    inputs = {b["block_id"]: b for b in form["blocks"] if b["type"] == "input"}
    assert list(inputs) == FIELDS
    for block_id, block in inputs.items():
        assert block["element"]["action_id"] == block_id and not block.get("optional")
    assert inputs["subscription"]["element"]["type"] == "external_select"
    assert inputs["subscription"]["element"]["min_query_length"] == 0
    assert inputs["partner"]["element"]["type"] == "external_select"
    reason = inputs["reason"]["element"]
    assert reason["type"] == "plain_text_input" and reason["multiline"] and reason["max_length"] == 500
    assert await harness.counts() == before


async def test_a_form_slack_did_not_open_is_said(harness: Harness) -> None:
    """A trigger lives 3 s and opens one view: when Slack refuses it, the person hears so (a shortcut has
    no channel: in a DM), rather than nothing at all."""
    h = harness
    h.slack.fail("views.open", status=200, error="expired_trigger_id")
    assert (await h.shortcut("dpor_set", ADMIN))[0] == 200
    assert h.surfaces.modal(ADMIN) is None

    def told() -> list[str]:
        return [m.text for m in h.slack.messages(h.slack.dm_channel(ADMIN))]

    await eventually(lambda: any("did not open" in t for t in told()))
    h.slack.fail("views.open", status=200, error="expired_trigger_id")
    _, answer = await h.command("set", ADMIN)  # the typed command answers in its own words
    assert "did not open" in answer["text"] and "/dpor set SUBSCRIPTION PARTNER_ID" in answer["text"]


async def test_set_without_arguments_opens_the_form_and_says_nothing(harness: Harness) -> None:
    before = await harness.counts()
    status, answer = await harness.command("set", ADMIN)
    assert status == 200 and not answer  # the form is the answer
    assert harness.modal(ADMIN)["callback_id"] == "dpor_set"
    assert json.loads(harness.modal(ADMIN)["private_metadata"]) == {"channel": APPROVALS}
    assert await harness.counts() == before


async def test_set_with_one_argument_is_still_a_usage_error(harness: Harness) -> None:
    _, answer = await harness.command("set prod", ADMIN)
    assert answer["text"].startswith(":warning:") and "Usage:" in answer["text"]
    assert harness.surfaces.modal(ADMIN) is None


async def test_subscriptions_offered_are_those_the_user_may_request_for(harness_any_db: Harness) -> None:
    harness = harness_any_db
    for user in (ADMIN, OWNER2, DEV_OWNER, BYSTANDER):
        await harness.shortcut("dpor_set", user)

    async def offered(user: str, typed: str) -> list[str]:
        return [o["value"] for o in await options(harness, user, "subscription", typed)]

    assert await offered(ADMIN, "") == [PROD]  # admin of prod only
    assert await offered(DEV_OWNER, "") == [DEV]
    assert await offered(OWNER2, "") == [DEV, PROD]  # an owner of every subscription, by name
    assert await offered(BYSTANDER, "") == []
    assert await offered(BYSTANDER, "prod") == []
    # By name, alias or ID, in any case and width.
    assert await offered(OWNER2, "PRODUCTION") == [PROD]
    assert await offered(OWNER2, "ｐｒｏｄ") == [PROD]
    assert await offered(OWNER2, DEV[:8]) == [DEV]
    assert await offered(OWNER2, "no such thing") == []
    assert await offered(ADMIN, "dev") == []  # exists, but ADMIN may not request there
    (label,) = [o["text"]["text"] for o in await options(harness, ADMIN, "subscription", "eu")]
    assert "Production EU" in label and "prod" in label and PROD in label


async def test_typeahead_ignores_case_beyond_ascii(harness_any_db: Harness) -> None:
    """`Électricité` is found by `élec` and `ÉLEC` on either database (SQLite folds ASCII only)."""
    h = harness_any_db
    sub = "aaaaaaaa-0000-4000-8000-000000000000"
    await directory.upsert_subscriptions(
        h.bot.db, [directory.SubscriptionRow(sub, "Électricité Öresund", "ÉDF")], actor="test"
    )
    await directory.add_partner(h.bot.db, "7777777", "Ørsted Énergie", actor="test")
    await h.shortcut("dpor_set", OWNER2)
    for typed in ("élec", "ÉLEC", "öresund", "ÖRESUND", "édf"):
        assert [o["value"] for o in await options(h, OWNER2, "subscription", typed)] == [sub], typed
    for typed in ("ørsted", "ØRSTED", "énergie", "ÉNERGIE"):
        assert [o["value"] for o in await options(h, OWNER2, "partner", typed)] == ["7777777"], typed


async def test_typeahead_drops_control_characters(
    harness_any_db: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL or another control character typed (or pasted) into a typeahead is dropped, as from every other
    text people type: PostgreSQL refuses NUL in a query, and each keystroke logged an error."""
    h = harness_any_db
    caplog.set_level(logging.WARNING)
    await h.shortcut("dpor_set", OWNER2)
    for typed in ("pro\x00d", "pr\x07od\x1b"):
        assert [o["value"] for o in await options(h, OWNER2, "subscription", typed)] == [PROD], repr(typed)
    assert [o["value"] for o in await options(h, OWNER2, "subscription", "\x00")] == [DEV, PROD]  # as ""
    assert [o["value"] for o in await options(h, OWNER2, "partner", "Con\x00toso")] == [NEW_PARTNER]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_at_most_a_hundred_subscriptions_are_offered(harness: Harness) -> None:
    rows = [
        directory.SubscriptionRow(f"{n:08x}-0000-0000-0000-000000000000", f"Team {n:03} " + "w" * 80)
        for n in range(120)
    ]
    await directory.upsert_subscriptions(harness.bot.db, rows, actor="test")
    await harness.shortcut("dpor_set", OWNER2)
    offered = await options(harness, OWNER2, "subscription", "")
    assert len(offered) == 100
    assert len(await options(harness, OWNER2, "subscription", "team 11")) == 10


async def test_partners_offered_from_the_directory_and_a_typed_id_with_a_warning(
    harness_any_db: Harness,
) -> None:
    harness = harness_any_db
    await harness.shortcut("dpor_set", ADMIN)

    async def offered(typed: str) -> list[tuple[str, str]]:
        return [(o["value"], o["text"]["text"]) for o in await options(harness, ADMIN, "partner", typed)]

    everyone = await offered("")
    assert [v for v, _ in everyone] == [NEW_PARTNER, OLD_PARTNER]  # Contoso, Fabrikam: by name
    assert "Contoso MSP" in everyone[0][1] and NEW_PARTNER in everyone[0][1]
    assert await offered("contoso") == everyone[:1]
    assert await offered(NEW_PARTNER) == everyone[:1]  # in the directory: no warning
    assert await offered("7654321") == [("7654321", "7654321 — not in the partner directory")]
    # Typed in fullwidth digits, it is offered (and would be stored) in ASCII.
    assert await offered("７６５４３２１") == [("7654321", "7654321 — not in the partner directory")]
    assert await offered("765432") == [("765432", "765432 — not in the partner directory")]
    assert await offered("76543210") == []  # not a partner ID
    assert await offered("nobody") == []


async def refused(h: Harness, user: str, form: dict[str, Any], expected: dict[str, str]) -> None:
    """Submit `form`: the answer is inline errors on exactly the expected fields; nothing is written."""
    before = await h.counts()
    status, answer = await h.submit(user, form)
    assert status == 200 and answer["response_action"] == "errors", answer
    assert set(answer["errors"]) == set(expected)
    for field, words in expected.items():
        assert words in answer["errors"][field], answer["errors"][field]
        assert "<" not in answer["errors"][field] and "`" not in answer["errors"][field]
    await h.settle()
    assert await h.counts() == before
    assert h.modal(user)["callback_id"] == "dpor_set"  # the form stays open to be fixed


async def test_each_problem_comes_back_on_its_field_and_writes_nothing(harness_any_db: Harness) -> None:
    harness = harness_any_db
    h = harness
    await h.shortcut("dpor_set", ADMIN)
    await refused(h, ADMIN, values(None, None, None), {f: "" for f in FIELDS})
    await refused(h, ADMIN, values(reason="   "), {"reason": "Say why"})
    await refused(h, ADMIN, values(reason="x" * 501), {"reason": "501 characters"})
    await refused(h, ADMIN, values(subscription=DEV), {"subscription": "not an admin or owner"})
    await refused(h, ADMIN, values(subscription="no-such-sub"), {"subscription": "No subscription"})
    await refused(h, ADMIN, values(partner="12345"), {"partner": "not a partner ID"})
    await refused(h, ADMIN, values(partner="<!channel>"), {"partner": "&lt;!channel&gt; is not a partner ID"})
    async with h.bot.db.write(serial=False) as session:
        await session.execute(
            update(Subscription).where(Subscription.id == PROD).values(partner_id=NEW_PARTNER)
        )
    await refused(h, ADMIN, values(), {"partner": "already the partner of record"})
    await refused(h, ADMIN, values(partner="４９７７９８５"), {"partner": "already the partner of record"})


async def test_an_open_request_is_refused_on_the_subscription(harness: Harness) -> None:
    await harness.command(f"set prod {NEW_PARTNER} first", OWNER)
    await harness.shortcut("dpor_set", ADMIN)
    await refused(harness, ADMIN, values(partner=OLD_PARTNER), {"subscription": "Request #1"})


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUIRED_APPROVALS": "3"}])
async def test_too_few_approvers_is_refused_on_the_subscription(harness: Harness) -> None:
    await harness.shortcut("dpor_set", ADMIN)
    await refused(harness, ADMIN, values(), {"subscription": "3"})


async def test_from_the_shortcut_to_an_applied_change(harness_any_db: Harness) -> None:
    harness = harness_any_db
    h = harness
    await h.shortcut("dpor_set", ADMIN)
    await h.suggest(ADMIN, "subscription", "prod")
    status, answer = await h.submit(ADMIN, values(reason="Contoso <!channel> runs our support now"))
    assert status == 200 and not answer  # closes the form
    assert h.surfaces.modal(ADMIN) is None
    req = await h.request(1)
    assert (req.subscription_id, req.partner_id, req.requester_id) == (PROD, NEW_PARTNER, ADMIN)
    assert req.reason == "Contoso <!channel> runs our support now"
    card = await h.card(1)
    assert "&lt;!channel&gt;" in json.dumps(card.blocks) and "<!channel>" not in json.dumps(card.blocks)
    await h.settle()
    # No channel came with the shortcut: the private answer is a DM, in the typed command's words, sent
    # once the form has closed.
    def told() -> list[str]:
        return [m.text for m in h.slack.messages(h.slack.dm_channel(ADMIN))]

    opened = ":inbox_tray: Request #1 is open: set partner `4977985`"
    await eventually(lambda: any(t.startswith(opened) for t in told()))
    assert (await h.click("dpor_approve", 1, OWNER))[0] == 200
    await h.settle()
    assert (await h.request(1)).status == "applied"
    assert {"request.created", "request.approved", "apply.succeeded"} <= set(await h.audit_actions())


async def test_the_form_from_the_command_answers_as_the_command_does(harness: Harness) -> None:
    h = harness
    _, typed = await h.command(f"set dev {NEW_PARTNER} typed", DEV_OWNER)
    await h.command("set", ADMIN)
    assert (await h.submit(ADMIN, values(reason="from the form")))[1] in (None, "", {})
    await h.settle()
    await eventually(lambda: any(e.channel == APPROVALS for e in h.slack.ephemerals(ADMIN)))
    (answer,) = [e for e in h.slack.ephemerals(ADMIN) if e.channel == APPROVALS]
    # The same sentence as the typed command's answer, for this request.
    assert answer.text.split(" it expires")[0] == typed["text"].replace("#1", "#2").split(" it expires")[0]
    assert (await h.request(2)).reason == "from the form"


async def test_the_forms_answer_in_flight_at_shutdown_is_still_delivered(harness: Harness) -> None:
    """The private answer is sent after the ack (after_ack): on SIGTERM the bot closed its HTTP session under
    it, so a requester whose form Slack had closed heard nothing of the request it opened."""
    h = harness
    await h.command("set", ADMIN)
    h.slack.hold("chat.postEphemeral")
    assert (await h.submit(ADMIN, values(reason="just before a deploy")))[0] == 200
    await h.slack.wait_held("chat.postEphemeral")
    stopping = asyncio.ensure_future(h.bot.stop())
    await asyncio.sleep(0.2)  # the stop is under way, waiting for the answer
    h.slack.release("chat.postEphemeral")
    await stopping
    (answer,) = [e for e in h.slack.ephemerals(ADMIN) if e.channel == APPROVALS]
    assert answer.text.startswith(":inbox_tray: Request #1 is open")
