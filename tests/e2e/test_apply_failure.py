"""A provider that keeps raising an unexpected error fails its request visibly instead of blocking it."""

from __future__ import annotations

import json

import pytest

from bot.providers.ledger import LedgerProvider
from tests.harness import ADMIN, NEW_PARTNER, OWNER, Harness


@pytest.mark.parametrize("bot_env", [{"DPOR_OUTBOX_MAX_ATTEMPTS": "1"}])
async def test_unexpected_provider_error_fails_the_request(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: LedgerProvider, subscription_id: str, partner_id: str) -> None:
        raise RuntimeError("provider bug")

    monkeypatch.setattr(LedgerProvider, "apply", broken)
    await harness.command(f"set prod {NEW_PARTNER} will fail", ADMIN)
    await harness.click("dpor_approve", 1, OWNER)
    await harness.settle()
    req = await harness.request(1)
    assert req.status == "failed" and "RuntimeError" in (req.error or "")
    card = await harness.card(1)
    assert "dpor_retry" in json.dumps(card.blocks)
    # The subscription is not blocked: the failed request is no longer open.
    _, body = await harness.command("set prod 1234566 another", ADMIN)
    assert "Request #2" in body["text"], body
