"""Secrets never reach the log (errors included), a Slack message or the audit export."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from bot import audit
from bot.settings import ConfigError, load_settings
from tests.bot.providers.receiver import SECRET as WEBHOOK_SECRET
from tests.bot.providers.receiver import Receiver, Reply
from tests.harness import ADMIN, BYSTANDER, NEW_PARTNER, OWNER, TOKEN, Harness, start_harness
from tests.harness import SECRET as SIGNING_SECRET
from tests.slack import slash_command_body


async def test_a_full_run_with_errors_leaks_no_secret(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    replies = (Reply(503, {"message": "down"}), Reply(422, {"message": "refused"}), Reply(200))
    async with Receiver(*replies) as receiver:
        env = {
            "DPOR_PROVIDER": "webhook",
            "DPOR_WEBHOOK_URL": receiver.url,
            "DPOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DPOR_OUTBOX_MAX_ATTEMPTS": "2",
        }
        async for harness in start_harness(sqlite_url, **env):
            # A forged request, a refusal, a failing receiver (retried, then failed), a retry, an
            # internal error: every path that logs.
            await harness.client.post(
                harness.url, slash_command_body("list", user_id=ADMIN), headers={"X-Slack-Signature": "v0=00"}
            )
            await harness.command(f"set prod {NEW_PARTNER}", BYSTANDER)
            await harness.command(f"set prod {NEW_PARTNER} secrets test", ADMIN)
            await harness.click("dpor_approve", 1, OWNER)
            await until_decided(harness, 1)
            assert (await harness.request(1)).status == "failed"
            await harness.click("dpor_retry", 1, OWNER)
            await until_decided(harness, 1)
            assert (await harness.request(1)).status == "applied"
            with monkeypatch.context() as patch:
                patch.setattr("storage.queries.subscription_overview", _boom)
                _, body = await harness.command("show prod", ADMIN)
            assert "Something went wrong" in body["text"]

            exported = io.StringIO()
            await audit.export(harness.bot.db, exported, "jsonl")
            slack_calls = json.dumps([c.params for c in harness.slack.calls])

    logs = caplog.text
    assert "Traceback" in logs and "webhook" in logs.lower()  # the errors were logged
    for secret in (TOKEN, SIGNING_SECRET, WEBHOOK_SECRET):
        assert secret not in logs
        assert secret not in slack_calls
        assert secret not in exported.getvalue()


@pytest.mark.parametrize("delimiter", ["/", "?", "#", "@"])
def test_a_webhook_url_with_ambiguous_credentials_is_refused(delimiter: str) -> None:
    """Unencoded, the password's start would be taken for the host and shown on cards and in the log."""
    url = f"https://hook:pw{delimiter}password-secret@hooks.example.com/dpor?access_token=token-secret"
    with pytest.raises(ConfigError) as caught:
        load_settings(DPOR_PROVIDER="webhook", DPOR_WEBHOOK_URL=url, DPOR_WEBHOOK_SECRET=WEBHOOK_SECRET)
    message = str(caught.value)
    assert message.startswith("DPOR_WEBHOOK_URL: expected a URL whose user name and password percent-encode")
    assert "secret" not in message


async def test_a_webhook_url_s_credentials_and_query_never_leak(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Receiver(Reply(503, {"message": "down"})) as receiver:
        host = receiver.url.split("://", 1)[1].split("/", 1)[0]
        url = f"http://hook:pw%2Fpassword-secret@{host}/dpor?access_token=token-secret"
        env = {
            "DPOR_PROVIDER": "webhook",
            "DPOR_WEBHOOK_URL": url,
            "DPOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "DPOR_OUTBOX_MAX_ATTEMPTS": "1",
        }
        async for harness in start_harness(sqlite_url, **env):
            await harness.command(f"set prod {NEW_PARTNER} credentials test", ADMIN)
            await harness.click("dpor_approve", 1, OWNER)
            await until_decided(harness, 1)
            failed = await harness.request(1)
            exported = io.StringIO()
            await audit.export(harness.bot.db, exported, "jsonl")
            slack_calls = json.dumps([c.params for c in harness.slack.calls])
    assert failed.status == "failed" and failed.error is not None
    assert f"the webhook receiver at {host} answered HTTP 503" in failed.error
    assert len(receiver.deliveries) == 1
    # The receiver's own access log (aiohttp.access, in this process) shows the query it was sent.
    logs = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    for where, text in (("log", logs), ("Slack", slack_calls), ("audit", exported.getvalue())):
        assert "secret" not in text, where


async def until_decided(harness: Harness, rid: int) -> None:
    """The receiver's 503 is retried after a backoff of a second or two: wait for the outcome."""
    for _ in range(300):
        if (await harness.request(rid)).status in ("applied", "failed"):
            await harness.settle()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"request {rid} is still {(await harness.request(rid)).status}")


async def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("database exploded")
