"""Control characters and bidi overrides never reach the database (PostgreSQL refuses NUL) or Slack."""

from __future__ import annotations

import json

from bot import directory
from bot.text import clean
from tests.e2e.conftest import ADMIN, PROD, Harness


def test_clean_keeps_text_and_drops_controls() -> None:
    assert clean("a\x00b\x07c\u202eevil\u2066x\ttab\nline é ✓") == "abcevilx\ttab\nline é ✓"


async def test_reason_with_nul_and_bidi_is_stored_clean(harness_any_db: Harness) -> None:
    status, body = await harness_any_db.command("set prod 4977985 a\x00b\u202eevil", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body
    assert (await harness_any_db.request(1)).reason == "abevil"
    await harness_any_db.settle()
    assert "\\u202e" not in json.dumps([c.params for c in harness_any_db.slack.calls])


async def test_names_and_aliases_are_cleaned(harness_any_db: Harness) -> None:
    rows = [directory.SubscriptionRow(PROD, "Prod\x00uction\u202e", "pr\x00od")]
    await directory.upsert_subscriptions(harness_any_db.bot.db, rows, actor="test")
    _, body = await harness_any_db.command("show prod", ADMIN)
    assert "Production" in json.dumps(body)


async def test_command_arguments_with_nul_are_answered(harness_any_db: Harness) -> None:
    _, body = await harness_any_db.command("show pr\x00od", ADMIN)
    assert "Production EU" in json.dumps(body)
    _, body = await harness_any_db.command("cancel 1\x00", ADMIN)
    assert body["text"].startswith(":no_entry:")
