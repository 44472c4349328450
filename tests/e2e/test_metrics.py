"""GET /metrics over real HTTP after real flows: requests by kind and outcome, ack latency, applies, the
outbox read at scrape time, expiries and drift; an optional bearer token; one registry per bot."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert, update

from bot.metrics import Metrics
from storage.models import OutboxMessage, Subscription, utcnow
from tests.bot.providers.pal import Replay, identities_file, install, ok
from tests.bot.providers.receiver import SECRET as WEBHOOK_SECRET
from tests.bot.providers.receiver import Receiver, Reply
from tests.harness import ADMIN, BYSTANDER, NEW_PARTNER, NOTIFY, OLD_PARTNER, OWNER, Harness, start_harness
from tests.slack import FORM_CONTENT_TYPE, slash_command_body

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(harness: Harness, token: str | None = None) -> tuple[int, str, str]:
    """Status, content type and body of GET /metrics."""
    url = harness.url.replace("/slack/events", "/metrics")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def samples(harness: Harness) -> Samples:
    status, content_type, text = await scrape(harness)
    assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def requests(found: Samples, kind: str, outcome: str) -> float:
    return value(found, "dpor_requests_total", kind=kind, outcome=outcome)


async def request_number(harness: Harness, text: str, user: str) -> int:
    status, body = await harness.command(text, user)
    assert status == 200 and "Request #" in body["text"], body
    return int(body["text"].split("Request #")[1].split()[0])


async def test_a_flow_is_counted_by_kind_and_outcome(harness_any_db: Harness) -> None:
    harness = harness_any_db
    before = await samples(harness)
    assert requests(before, "set", "ok") == 0 and requests(before, "approve", "refused") == 0
    assert value(before, "dpor_outbox_pending") == 0 and value(before, "dpor_database_up") == 1

    rid = await request_number(harness, f"set prod {NEW_PARTNER} Contoso runs our support now", ADMIN)
    await harness.card(rid)
    assert (await harness.click("dpor_approve", rid, BYSTANDER))[0] == 200  # not an owner: refused
    assert (await harness.click("dpor_approve", rid, OWNER))[0] == 200
    await harness.settle()
    assert (await harness.request(rid)).status == "applied"
    await harness.command("show nowhere", ADMIN)  # refused: no such subscription
    await harness.command("frobnicate", ADMIN)  # refused: no such subcommand
    await harness.command("show prod", ADMIN, team_id="T0ELSEWHERE")  # refused: another workspace
    async with aiohttp.ClientSession() as session:  # no signature: refused at the edge
        body = slash_command_body("help", user_id=ADMIN)
        headers = {"Content-Type": FORM_CONTENT_TYPE}
        async with session.post(harness.url, data=body, headers=headers) as response:
            assert response.status == 401

    found = await samples(harness)
    assert requests(found, "set", "ok") == 1
    assert requests(found, "approve", "refused") == 1
    assert requests(found, "approve", "ok") == 1
    assert requests(found, "show", "refused") == 1
    assert requests(found, "unknown", "refused") == 2  # the unknown subcommand and the other workspace
    assert requests(found, "unknown", "unauthenticated") == 1
    assert requests(found, "reject", "ok") == 0 and requests(found, "set", "error") == 0
    assert value(found, "dpor_applies_total", provider="ledger", outcome="applied") == 1
    assert value(found, "dpor_applies_total", provider="ledger", outcome="failed") == 0
    # Every POST to /slack/events is timed: three clicks and commands each, and the unsigned one.
    assert value(found, "dpor_ack_seconds_count") == 7
    assert value(found, "dpor_ack_seconds_bucket", le="+Inf") == 7
    assert 0 < value(found, "dpor_ack_seconds_sum") < 7 * 3  # Slack waits 3 s for each
    assert value(found, "dpor_outbox_pending") == 0 and value(found, "dpor_outbox_dead") == 0
    assert value(found, "dpor_outbox_oldest_due_seconds") == 0


async def test_outbox_gauges_are_read_from_the_database_at_each_scrape(harness_any_db: Harness) -> None:
    harness = harness_any_db
    now = utcnow()
    rows = [
        # Due for two minutes, held by a process that is not this one (its lease runs for an hour).
        {"key": "stuck", "status": "pending", "available_at": now - timedelta(minutes=2)},
        # Waiting for its backoff: pending, but not due.
        {"key": "later", "status": "pending", "available_at": now + timedelta(hours=1)},
        {"key": "buried", "status": "dead", "available_at": now},
    ]
    rows = [{"kind": "dm", "payload": {}, **row} for row in rows]
    async with harness.bot.db.write(serial=False) as session:
        await session.execute(insert(OutboxMessage), rows)
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.key == "stuck")
            .values(claimed_by="elsewhere", claimed_until=now + timedelta(hours=1))
        )
    found = await samples(harness)
    assert value(found, "dpor_outbox_pending") == 2
    assert value(found, "dpor_outbox_dead") == 1
    assert 120 <= value(found, "dpor_outbox_oldest_due_seconds") < 180

    async with harness.bot.db.write(serial=False) as session:
        await session.execute(update(OutboxMessage).values(status="done"))
    found = await samples(harness)
    assert value(found, "dpor_outbox_pending") == 0 and value(found, "dpor_outbox_dead") == 0
    assert value(found, "dpor_outbox_oldest_due_seconds") == 0


async def test_a_failed_apply_and_a_refused_retry_are_counted(database_url: str) -> None:
    refusal = Reply(422, {"message": "no contract with partner 4977985 yet"})
    async with Receiver(refusal) as receiver:
        env = {
            "DPOR_PROVIDER": "webhook",
            "DPOR_WEBHOOK_URL": receiver.url,
            "DPOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        async for harness in start_harness(database_url, **env):
            rid = await request_number(harness, f"set prod {NEW_PARTNER}", ADMIN)
            await harness.card(rid)
            await harness.click("dpor_approve", rid, OWNER)
            await harness.settle()
            assert (await harness.request(rid)).status == "failed"
            await harness.click("dpor_retry", rid, BYSTANDER)  # only an owner may retry
            found = await samples(harness)
            assert value(found, "dpor_applies_total", provider="webhook", outcome="failed") == 1
            assert value(found, "dpor_applies_total", provider="webhook", outcome="applied") == 0
            assert requests(found, "retry", "refused") == 1 and requests(found, "retry", "ok") == 0


async def test_the_sweep_counts_expiries(sqlite_url: str) -> None:
    env = {"DPOR_REQUEST_TTL": "1", "DPOR_SWEEP_INTERVAL": "0.1"}
    async for harness in start_harness(sqlite_url, **env):
        rid = await request_number(harness, f"set prod {NEW_PARTNER}", ADMIN)
        for _ in range(200):
            if (await harness.request(rid)).status == "expired":
                break
            await asyncio.sleep(0.05)
        assert (await harness.request(rid)).status == "expired"
        assert value(await samples(harness), "dpor_expiries_total") == 1


async def test_reconcile_counts_its_runs_and_each_new_drift(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = install(monkeypatch, Replay())
    replay.otherwise = ok(NEW_PARTNER, "Contoso MSP")  # someone linked another partner outside the bot
    env = {
        "DPOR_PROVIDER": "azure",
        "DPOR_AZURE_CREDENTIALS_FILE": identities_file(tmp_path),
        "DPOR_RECONCILE_EVERY": "0.1",
    }
    async for harness in start_harness(sqlite_url, **env):
        async with harness.bot.db.write(serial=False) as session:
            await session.execute(
                update(Subscription).values(partner_id=OLD_PARTNER)  # both records now differ from Azure
            )
        runs = 0.0
        for _ in range(200):  # both drifts from the records, then two more runs that see nothing new
            found = await samples(harness)
            if value(found, "dpor_drift_found_total", provider="azure") >= 2:
                runs = runs or value(found, "dpor_reconcile_runs_total", outcome="ok")
                if value(found, "dpor_reconcile_runs_total", outcome="ok") >= runs + 2:
                    break
            await asyncio.sleep(0.05)
        await harness.settle()
        notices = [m for m in harness.slack.messages(NOTIFY) if "Partner drift" in m.text]
        found = await samples(harness)
        # Each drift announced is counted once, however many runs see it again.
        assert value(found, "dpor_drift_found_total", provider="azure") == len(notices) >= 2
        assert value(found, "dpor_reconcile_runs_total", outcome="ok") >= 3
        assert value(found, "dpor_reconcile_runs_total", outcome="error") == 0


@pytest.mark.parametrize("bot_env", [{"DPOR_METRICS_TOKEN": "metrics-scrape-token"}])
async def test_a_metrics_token_is_required_once_set(harness: Harness) -> None:
    assert (await scrape(harness))[0] == 401
    assert (await scrape(harness, "not-the-token"))[0] == 401
    status, _, text = await scrape(harness, "metrics-scrape-token")
    assert status == 200 and "dpor_requests_total" in text
    assert "metrics-scrape-token" not in text


async def test_each_bot_counts_in_a_registry_of_its_own(harness: Harness) -> None:
    other = Metrics()
    other.request("set", "ok")
    await harness.command("help", ADMIN)
    found = await samples(harness)
    assert requests(found, "help", "ok") == 1 and requests(found, "set", "ok") == 0
    started = time.perf_counter()
    assert b"dpor_requests_total" in await other.exposition(harness.bot.db)
    assert time.perf_counter() - started < 5


async def test_an_oversized_body_is_counted_as_refused_not_as_an_internal_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone can post 2 MB: it must not fire the internal-errors alert (outcome="error", README: Metrics),
    whose lines the log would not explain."""
    body = b"x" * 2_000_000
    async with (
        aiohttp.ClientSession() as session,
        session.post(harness.url, data=body, headers={"Content-Type": FORM_CONTENT_TYPE}) as response,
    ):
        assert response.status == 413
    found = await samples(harness)
    assert requests(found, "unknown", "error") == 0
    assert requests(found, "unknown", "refused") == 1
    assert any("413" in r.getMessage() for r in caplog.records if r.name == "dpor")
