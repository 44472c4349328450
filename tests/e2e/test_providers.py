"""The real bot with real providers: Partner Admin Link replayed offline, a webhook receiver, Retry, drift."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select, update

from storage.models import AuditEvent, Subscription
from tests.bot.providers.pal import PARTNERS, Replay, identities_file, install, link, not_linked, ok
from tests.bot.providers.receiver import SECRET, Receiver, Reply
from tests.harness import (
    ADMIN,
    APPROVALS,
    BYSTANDER,
    DEV,
    NEW_PARTNER,
    NOTIFY,
    OLD_PARTNER,
    OWNER,
    PROD,
    Harness,
    start_harness,
)
from tests.processes import DPOR_BOT, free_port


async def request_and_approve(harness: Harness) -> int:
    status, body = await harness.command(f"set prod {NEW_PARTNER} Contoso now runs our support", ADMIN)
    assert status == 200 and "Request #" in body["text"], body
    rid = int(body["text"].split("Request #")[1].split()[0])
    await harness.card(rid)
    status, _ = await harness.click("dpor_approve", rid, OWNER)
    assert status == 200
    await harness.settle()
    return rid


def shown(harness: Harness, card_ts: str) -> str:
    return json.dumps(harness.slack.message(APPROVALS, card_ts).blocks)


async def events(harness: Harness, action: str) -> list[AuditEvent]:
    async with harness.bot.db.read() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list((await session.scalars(query)).all())


async def test_azure_card_shows_the_partner_name_the_service_returned(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No link yet (404 ManagementPartnerNotFound), PUT answers the spec's PutPartnerDetails shape, read back.
    replay = install(
        monkeypatch,
        Replay(not_linked(), ok(NEW_PARTNER, "Contoso MSP Ltd"), ok(NEW_PARTNER, "Contoso MSP Ltd")),
    )
    env = {"DPOR_PROVIDER": "azure", "DPOR_AZURE_CREDENTIALS_FILE": identities_file(tmp_path)}
    async for harness in start_harness(database_url, **env):
        rid = await request_and_approve(harness)

        req = await harness.request(rid)
        assert req.status == "applied"
        assert replay.calls() == [f"GET {PARTNERS}", f"PUT {PARTNERS}/{NEW_PARTNER}", f"GET {PARTNERS}"]
        card = shown(harness, req.card_ts or "")
        assert "Applied" in card
        assert "names partner `4977985` *Contoso MSP Ltd*, not *Contoso MSP* as in the directory" in card
        (event,) = await events(harness, "apply.succeeded")
        assert event.data["partner_name"] == "Contoso MSP Ltd" and event.data["name_differs"] is True
        assert event.data["identity"]["object_id"] == link(NEW_PARTNER, "")["properties"]["objectId"]


async def test_webhook_applies_against_a_receiver(sqlite_url: str) -> None:
    async with Receiver(Reply(200)) as receiver:
        env = {"DPOR_PROVIDER": "webhook", "DPOR_WEBHOOK_URL": receiver.url, "DPOR_WEBHOOK_SECRET": SECRET}
        async for harness in start_harness(sqlite_url, **env):
            rid = await request_and_approve(harness)
            assert (await harness.request(rid)).status == "applied"
            (delivery,) = receiver.deliveries
            assert receiver.forged == 0
            assert delivery.body["partner"] == {"id": NEW_PARTNER, "name": "Contoso MSP"}
            assert delivery.body["request"]["id"] == rid
            _, body = await harness.command("show prod", ADMIN)
            assert NEW_PARTNER in json.dumps(body)


async def test_a_failed_apply_is_retried_from_the_card_by_an_owner_only(database_url: str) -> None:
    refusal = Reply(422, {"message": "no contract with partner 4977985 yet"})
    async with Receiver(refusal, Reply(200)) as receiver:
        env = {"DPOR_PROVIDER": "webhook", "DPOR_WEBHOOK_URL": receiver.url, "DPOR_WEBHOOK_SECRET": SECRET}
        async for harness in start_harness(database_url, **env):
            rid = await request_and_approve(harness)
            req = await harness.request(rid)
            assert req.status == "failed"
            card = shown(harness, req.card_ts or "")
            assert "Apply failed" in card and "no contract with partner 4977985 yet" in card
            assert '"action_id": "dpor_retry"' in card
            dm = harness.slack.dm_channel(ADMIN)
            assert any("no contract" in m.text for m in harness.slack.messages(dm))
            assert any("no contract" in m.text for m in harness.slack.messages(NOTIFY))

            status, _ = await harness.click("dpor_retry", rid, BYSTANDER)
            assert status == 200
            await harness.settle()
            assert "Only an owner" in harness.slack.ephemerals(BYSTANDER)[-1].text
            assert (await harness.request(rid)).status == "failed" and len(receiver.deliveries) == 1
            (denied,) = await events(harness, "approval.denied")
            assert denied.actor == BYSTANDER and denied.data["act"] == "retry"

            status, _ = await harness.click("dpor_retry", rid, OWNER)
            assert status == 200
            await harness.settle()
            req = await harness.request(rid)
            assert req.status == "applied" and req.error is None
            assert len(receiver.deliveries) == 2
            assert "Applied" in shown(harness, req.card_ts or "")
            started = await events(harness, "apply.started")
            assert [e.actor for e in started] == ["dpor-bot", OWNER] and started[1].data == {"retry": True}
            actions = [e.action for e in await events(harness, "apply.failed")] + [
                e.action for e in await events(harness, "apply.succeeded")
            ]
            assert actions == ["apply.failed", "apply.succeeded"]


def drift_notices(harness: Harness) -> list[str]:
    return [m.text for m in harness.slack.messages(NOTIFY) if "Partner drift" in m.text]


async def test_serve_reconciles_periodically_and_announces_drift_once(
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
                update(Subscription).where(Subscription.id == PROD).values(partner_id=OLD_PARTNER)
            )
        for _ in range(200):  # until the drift from the record (1234566) is announced
            if any("Fabrikam Consulting" in text for text in drift_notices(harness)):
                break
            await asyncio.sleep(0.02)
        runs_so_far = len(replay.arm)
        for _ in range(200):  # three more runs (two subscriptions each)
            if len(replay.arm) >= runs_so_far + 6:
                break
            await asyncio.sleep(0.02)
        await harness.settle()

        # Both subscriptions sign in as the `*` identity, so both carry its link: each drift is announced
        # once, however many runs see it. (A run before the record was set saw another drift for PROD.)
        texts = drift_notices(harness)
        assert len(texts) == len(set(texts))
        assert len([t for t in texts if "*Dev*" in t]) == 1
        assert len([t for t in texts if "*Fabrikam Consulting* (`1234566`)" in t]) == 1
        drift = await events(harness, "partner.drift")
        assert len(drift) == len(texts)
        assert all(e.data["observed_partner_id"] == NEW_PARTNER for e in drift)
        assert {e.subscription_id for e in drift} == {PROD, DEV}
        from_record = [e for e in drift if e.data["recorded_partner_id"] == OLD_PARTNER]
        assert [e.subscription_id for e in from_record] == [PROD]


async def test_serve_with_a_misconfigured_provider_exits_1_in_one_line(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))},
        "DATABASE_URL": f"sqlite:///{tmp_path / 'dpor.db'}",
        "SLACK_BOT_TOKEN": "xoxb-x",
        "SLACK_SIGNING_SECRET": "s",
        "DPOR_PROVIDER": "webhook",
        "DPOR_WEBHOOK_SECRET": "not-for-the-screen",
    }
    proc = await asyncio.create_subprocess_exec(
        DPOR_BOT,
        "serve",
        "--port",
        str(free_port()),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert lines == ["error: DPOR_WEBHOOK_URL: the webhook provider needs the receiver's URL"], lines
