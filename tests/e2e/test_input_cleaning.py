"""Control, bidi and invisible characters never reach the database (PostgreSQL refuses NUL), Slack, a
webhook receiver or the audit log."""

from __future__ import annotations

import io
import json

import pytest

from bot import audit, directory
from bot.errors import BadInput
from bot.text import clean
from tests.bot.providers.receiver import SECRET as WEBHOOK_SECRET
from tests.bot.providers.receiver import Receiver
from tests.harness import ADMIN, NEW_PARTNER, OWNER, PROD, Harness, start_harness

# Characters that show nothing: tags (U+E0000-E007F), zero-width space, non-joiner and joiner, the word
# joiner, the byte-order mark, direction marks, and the line and paragraph separators.
INVISIBLE = [
    "\U000e0001",
    "\U000e0041",
    "\U000e007f",
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u200e",
    "\u200f",
    "\u061c",
    "\u2028",
    "\u2029",
]


def test_clean_keeps_text_and_drops_controls() -> None:
    assert clean("a\x00b\x07c\u202eevil\u2066x\ttab\nline é ✓") == "abcevilx\ttab\nline é ✓"


async def test_reason_with_nul_and_bidi_is_stored_clean(harness_any_db: Harness) -> None:
    status, body = await harness_any_db.command("set prod 4977985 a\x00b\u202eevil", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert (await harness_any_db.request(1)).reason == "abevil"
    await harness_any_db.settle()
    assert "\\u202e" not in json.dumps([c.params for c in harness_any_db.slack.calls])


@pytest.mark.parametrize("char", INVISIBLE)
def test_clean_drops_invisible_characters(char: str) -> None:
    assert clean(f"Con{char}toso{char}\n{char}ok") == "Contoso\nok"


async def test_names_are_cleaned_and_aliases_with_hidden_characters_refused(harness_any_db: Harness) -> None:
    db = harness_any_db.bot.db
    rows = [directory.SubscriptionRow(PROD, "Prod\x00uction\u202e\u200b\U000e0041", "prod")]
    await directory.upsert_subscriptions(db, rows, actor="test")
    assert {s.id: s.name for s in await directory.list_subscriptions(db)}[PROD] == "Production"
    _, body = await harness_any_db.command("show prod", ADMIN)
    assert "Production" in json.dumps(body)
    for alias in ("pr\x00od", "pr\u200bod", "prod\U000e0041"):
        with pytest.raises(BadInput, match="invisible"):
            await directory.upsert_subscriptions(
                db, [directory.SubscriptionRow(PROD, "Prod", alias)], actor="test"
            )


async def test_invisible_characters_never_reach_the_webhook_or_the_audit_log(sqlite_url: str) -> None:
    hidden = "".join(INVISIBLE)
    async with Receiver() as receiver:
        env = {
            "DPOR_PROVIDER": "webhook",
            "DPOR_WEBHOOK_URL": receiver.url,
            "DPOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        async for harness in start_harness(sqlite_url, **env):
            db = harness.bot.db
            rows = [directory.SubscriptionRow(PROD, f"Production{hidden} EU", "prod")]
            await directory.upsert_subscriptions(db, rows, actor="test")
            await directory.add_partner(db, NEW_PARTNER, f"Contoso{hidden} MSP", actor="test")
            status, body = await harness.command(f"set prod {NEW_PARTNER} move{hidden} to Contoso", ADMIN)
            assert status == 200 and "Request #1" in body["text"], body
            await harness.click("dpor_approve", 1, OWNER)
            await harness.settle()
            assert (await harness.request(1)).status == "applied"
            exported = io.StringIO()
            await audit.export(db, exported, "jsonl")
            slack_calls = json.dumps([c.params for c in harness.slack.calls], ensure_ascii=False)
    [delivery] = receiver.deliveries
    assert delivery.body["request"]["reason"] == "move to Contoso"
    assert delivery.body["subscription"]["name"] == "Production EU"
    assert delivery.body["partner"]["name"] == "Contoso MSP"
    sent = json.dumps(delivery.body, ensure_ascii=False)
    for char in INVISIBLE:
        for where, text in (("webhook", sent), ("audit log", exported.getvalue()), ("Slack", slack_calls)):
            assert char not in text and ascii(char)[1:-1] not in text, (where, ascii(char))


async def test_command_arguments_with_nul_are_answered(harness_any_db: Harness) -> None:
    _, body = await harness_any_db.command("show pr\x00od", ADMIN)
    assert "Production EU" in json.dumps(body)
    _, body = await harness_any_db.command("cancel 1\x00", ADMIN)
    assert body["text"].startswith(":no_entry:")
