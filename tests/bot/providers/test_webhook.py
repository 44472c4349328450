"""The webhook provider against a local receiver that checks the signature, through the outbox worker."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from bot.providers import Providers
from bot.settings import ConfigError, Settings
from storage.db import Database
from storage.models import Subscription, utcnow
from tests.bot.providers.conftest import ADMIN, NEW, NOTIFY, OLD, SUB, World, make_world, since, when
from tests.bot.providers.receiver import SECRET, Receiver, Reply


async def webhook_world(database_url: str, receiver_url: str, secret: str = SECRET) -> AsyncIterator[World]:
    async for world in make_world(
        database_url, DPOR_PROVIDER="webhook", DPOR_WEBHOOK_URL=receiver_url, DPOR_WEBHOOK_SECRET=secret
    ):
        yield world


async def test_200_is_applied_and_the_delivery_is_signed_and_described(sqlite_url: str) -> None:
    async with Receiver(Reply(200, {"ok": True})) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            rid = await world.approved()
            await world.drive(world.worker())

            req = await world.request(rid)
            assert req.status == "applied"
            assert (await world.subscription()).partner_id == NEW
            assert receiver.forged == 0
            (delivery,) = receiver.deliveries
            headers = delivery.headers
            assert (
                headers["Content-Type"] == "application/json" and headers["X-DPOR-Event"] == "partner.apply"
            )
            assert abs(int(headers["X-DPOR-Timestamp"]) - time.time()) < 60
            assert headers["X-DPOR-Signature"].startswith("v1=") and len(headers["X-DPOR-Delivery"]) == 32
            body = delivery.body
            assert body["type"] == "partner.apply"
            assert body["subscription"] == {"id": SUB, "name": "Production EU"}
            assert body["partner"] == {"id": NEW, "name": "Contoso MSP"}
            assert body["previous_partner"] is None
            assert body["request"]["id"] == rid and body["request"]["approved_at"]
            assert req.result is not None and req.result["provider"] == "webhook"
            assert req.result["identity"]["delivery"] == headers["X-DPOR-Delivery"]
            assert SECRET not in json.dumps(req.result)


async def test_the_receivers_partner_name_is_recorded_when_it_differs(sqlite_url: str) -> None:
    async with Receiver(Reply(200, {"partner_id": NEW, "partner_name": "Contoso Ltd"})) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            rid = await world.approved()
            await world.drive(world.worker())
            req = await world.request(rid)
            assert req.status == "applied" and req.result is not None
            assert req.result["partner_name"] == "Contoso Ltd"
            (event,) = await world.events("apply.succeeded")
            assert event.data["name_differs"] is True and event.data["directory_name"] == "Contoso MSP"
            card = json.dumps(world.slack.message(req.card_channel, req.card_ts).blocks)
            assert "Contoso Ltd" in card and "as in the directory" in card


async def test_a_receiver_reporting_another_partner_fails(sqlite_url: str) -> None:
    async with Receiver(Reply(200, {"partner_id": OLD})) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            rid = await world.approved()
            await world.drive(world.worker())
            req = await world.request(rid)
            assert req.status == "failed" and req.error == (
                f"the webhook receiver answered HTTP 200 but reports partner {OLD}, not {NEW}"
            )
            assert (await world.subscription()).partner_id is None


async def test_422_fails_with_the_receivers_message(sqlite_url: str) -> None:
    refusal = {"message": "partner 4977985 has no contract for Production EU"}
    async with Receiver(Reply(422, refusal)) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            rid = await world.approved()
            await world.drive(world.worker())

            req = await world.request(rid)
            assert req.status == "failed"
            assert req.error == (
                "the webhook receiver refused the change (HTTP 422): "
                "partner 4977985 has no contract for Production EU"
            )
            assert len(receiver.deliveries) == 1  # a refusal is not retried
            assert (await world.subscription()).partner_id is None
            card = json.dumps(world.slack.message(req.card_channel, req.card_ts).blocks)
            assert "has no contract" in card and "dpor_retry" in card
            assert any(
                "has no contract" in m.text for m in world.slack.messages(world.slack.dm_channel(ADMIN))
            )
            assert any("has no contract" in m.text for m in world.slack.messages(NOTIFY))


async def test_503_then_200_is_retried_then_applied(database_url: str) -> None:
    busy = Reply(503, {"message": "maintenance"}, {"Retry-After": "5"})
    async with Receiver(busy, Reply(200)) as receiver:
        async for world in webhook_world(database_url, receiver.url):
            rid = await world.approved()
            worker = world.worker()
            started = utcnow()
            await world.drive(worker)
            row = await world.apply_row(rid)
            assert row.status == "pending" and "HTTP 503: maintenance" in (row.last_error or "")
            assert since(row.available_at, started) > 4.0 and when(row.available_at) <= 5.0
            assert (await world.request(rid)).status == "applying"

            await world.time_passes(rid)
            await world.drive(worker)
            assert (await world.request(rid)).status == "applied"
            first, second = receiver.deliveries
            # The same change (an idempotency key for the receiver), delivered twice, each signed afresh.
            assert first.body["request"]["id"] == second.body["request"]["id"] == rid
            assert first.headers["X-DPOR-Delivery"] != second.headers["X-DPOR-Delivery"]
            assert receiver.forged == 0


async def test_a_receiver_that_does_not_answer_in_time_is_retried(sqlite_url: str) -> None:
    async with Receiver(Reply(200, delay=2.0)) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            rid = await world.approved()
            await world.drive(world.worker())
            row = await world.apply_row(rid)
            assert row.status == "pending" and "did not answer within 0.3s" in (row.last_error or "")


async def test_an_unreachable_receiver_is_retried(sqlite_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once the socket closes
    async for world in webhook_world(sqlite_url, f"http://127.0.0.1:{port}/dpor"):
        rid = await world.approved()
        await world.drive(world.worker())
        row = await world.apply_row(rid)
        assert row.status == "pending" and "could not be reached" in (row.last_error or "")


async def test_a_wrong_secret_is_caught_by_the_receiver(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with Receiver() as receiver:
        async for world in webhook_world(sqlite_url, receiver.url, secret="not-the-receivers-secret"):
            rid = await world.approved()
            await world.drive(world.worker())
            assert receiver.forged == 1 and not receiver.deliveries
            req = await world.request(rid)
            assert req.status == "failed" and req.error == (
                "the webhook receiver refused the change (HTTP 401): bad signature"
            )
            assert caplog.records and "not-the-receivers-secret" not in caplog.text


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DPOR_WEBHOOK_SECRET": SECRET}, "DPOR_WEBHOOK_URL"),
        ({"DPOR_WEBHOOK_URL": "https://hooks.example.com/dpor"}, "DPOR_WEBHOOK_SECRET"),
    ],
)
def test_a_webhook_provider_without_url_or_secret_stops_start_up(
    sqlite_url: str, env: dict[str, str], variable: str
) -> None:
    settings = Settings(DATABASE_URL=sqlite_url, DPOR_PROVIDER="webhook", **env)
    with pytest.raises(ConfigError) as caught:
        Providers(settings, Database(sqlite_url))
    assert str(caught.value).startswith(f"{variable}: ") and "\n" not in str(caught.value)
    assert SECRET not in str(caught.value)


async def test_previous_partner_is_described(sqlite_url: str) -> None:
    async with Receiver(Reply(200)) as receiver:
        async for world in webhook_world(sqlite_url, receiver.url):
            async with world.db.write(serial=False) as session:  # an earlier change left OLD
                await session.execute(
                    update(Subscription).where(Subscription.id == SUB).values(partner_id=OLD)
                )
            rid = await world.approved(NEW)
            await world.drive(world.worker())
            assert (await world.request(rid)).status == "applied"
            assert receiver.deliveries[0].body["previous_partner"] == {
                "id": OLD,
                "name": "Fabrikam Consulting",
            }


async def test_a_subscription_whose_provider_is_not_configured_fails_visibly(sqlite_url: str) -> None:
    # SUB was given `--provider webhook` after start-up, on a bot with no DPOR_WEBHOOK_URL.
    async for world in make_world(sqlite_url, column="webhook"):
        with pytest.raises(ConfigError, match=r"^DPOR_WEBHOOK_URL: "):
            await world.providers.check()  # what `serve` runs at start: it would stop here
        rid = await world.approved()
        await world.drive(world.worker())
        req = await world.request(rid)
        assert req.status == "failed"
        assert req.error == (
            "the webhook provider is not configured: "
            "DPOR_WEBHOOK_URL: the webhook provider needs the receiver's URL"
        )
