"""Drift: `reconcile` asks each subscription's provider what it carries; what differs is recorded and told."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from bot import audit, reconcile, watches
from bot.cli import cli
from bot.errors import SYSTEM_ACTOR
from bot.providers import NAMES as PROVIDER_NAMES
from bot.providers import OLD_NAMES
from handlers.messages import drift_text
from storage import requests
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, Subscription
from tests.bot.providers.conftest import (
    NEW,
    NOTIFY,
    OLD,
    OTHER,
    SUB,
    TEAM,
    World,
    make_world,
)
from tests.bot.providers.pal import (
    OBJECT,
    TENANT,
    Replay,
    identities_file,
    install,
    not_linked,
    ok,
    server_error,
)

WATCHERS = "C0WATCHERS"


async def record(db: Database, subscription_id: str, partner_id: str | None) -> None:
    """The partner of record, as an earlier apply left it."""
    async with db.write(serial=False) as session:
        await session.execute(
            update(Subscription).where(Subscription.id == subscription_id).values(partner_id=partner_id)
        )


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    # SUB is linked through Partner Admin Link; OTHER keeps DPOR_PROVIDER (the ledger).
    async for w in make_world(
        database_url, column="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        await record(w.db, SUB, OLD)
        await watches.watch(w.db, team_id=TEAM, channel_id=WATCHERS, subscription="prod", user_id="U0OWNER")
        yield w


@pytest.fixture
async def sqlite_world(sqlite_url: str, tmp_path: Path) -> AsyncIterator[World]:
    async for w in make_world(
        sqlite_url, column="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        await record(w.db, SUB, OLD)
        yield w


def azure(world: World, replay: Replay) -> Replay:
    world.providers.get("azure").transport = replay  # type: ignore[attr-defined]
    return replay


async def notices(db: Database) -> list[OutboxMessage]:
    async with db.read() as session:
        return list(
            (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.kind == "notice").order_by(OutboxMessage.id)
                )
            ).all()
        )


async def test_drift_is_found_recorded_and_announced(world: World) -> None:
    azure(world, Replay(ok(NEW, "Contoso MSP Ltd")))
    findings = await reconcile.reconcile(world.db, world.providers, world.policy)

    by_id = {f.subscription_id: f for f in findings}
    drift = by_id[SUB]
    assert findings[0] is drift  # drift is listed first
    assert (drift.status, drift.recorded, drift.observed) == ("drift", OLD, NEW)
    assert drift.observed_name == "Contoso MSP Ltd" and drift.announced
    assert by_id[OTHER].status == "in sync" and by_id[OTHER].provider == "ledger"
    assert (await world.subscription()).partner_id == OLD  # the record is not changed

    (event,) = await world.events("partner.drift")
    assert event.actor == SYSTEM_ACTOR and event.subscription_id == SUB and event.request_id is None
    assert event.data["recorded_partner_id"] == OLD and event.data["observed_partner_id"] == NEW
    assert event.data["observed_partner_name"] == "Contoso MSP Ltd" and event.data["provider"] == "azure"
    assert event.data["identity"]["tenant_id"] == TENANT and event.data["identity"]["object_id"] == OBJECT
    assert (await audit.verify(world.db)).ok

    assert sorted(n.payload["channel"] for n in await notices(world.db)) == sorted([NOTIFY, WATCHERS])
    await world.drive(world.worker())
    for channel in (NOTIFY, WATCHERS):
        (message,) = world.slack.messages(channel)
        assert "Partner drift" in message.text and "Production EU" in message.text
        assert (
            "*Fabrikam Consulting* (`1234566`)" in message.text
            and "*Contoso MSP Ltd* (`4977985`)" in message.text
        )


async def test_a_known_drift_is_reported_but_not_recorded_again(world: World) -> None:
    replay = azure(world, Replay())
    replay.otherwise = ok(NEW, "Contoso MSP")
    first = (await reconcile.reconcile(world.db, world.providers, world.policy))[0]
    again = (await reconcile.reconcile(world.db, world.providers, world.policy))[0]

    assert first.status == again.status == "drift"
    assert first.announced and not again.announced
    (event,) = await world.events("partner.drift")
    assert again.since == event.at
    assert len(await notices(world.db)) == 2  # NOTIFY and WATCHERS, once

    # The target changes again: a new drift.
    replay.otherwise = not_linked()
    third = (await reconcile.reconcile(world.db, world.providers, world.policy))[0]
    assert third.announced and third.observed is None
    assert len(await world.events("partner.drift")) == 2 and len(await notices(world.db)) == 4


async def test_a_subscription_being_applied_is_not_read(sqlite_world: World) -> None:
    replay = azure(sqlite_world, Replay())
    rid = await sqlite_world.approved()
    assert (await sqlite_world.request(rid)).status == "approved"
    findings = await reconcile.reconcile(sqlite_world.db, sqlite_world.providers, sqlite_world.policy)
    busy = next(f for f in findings if f.subscription_id == SUB)
    assert busy.status == "busy" and f"#{rid}" in (busy.message or "")
    assert replay.arm == [] and await sqlite_world.events("partner.drift") == []


async def test_a_change_approved_during_the_run_is_busy_not_drift(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reads which subscriptions are being applied once, first; a request approved after that read
    and already at the provider when its target is read (the target shows the new partner, the record
    the old one) is the bot's own change under way: busy, with no `partner.drift` and no notice."""
    azure(world, Replay(ok(NEW, "Contoso MSP Ltd")))
    rid = await world.approved()
    monkeypatch.setattr(requests, "in_flight", _nothing_in_flight)  # as read before the approval
    findings = await reconcile.reconcile(world.db, world.providers, world.policy)
    busy = next(f for f in findings if f.subscription_id == SUB)
    assert busy.status == "busy" and f"#{rid}" in (busy.message or ""), busy
    assert await world.events("partner.drift") == [] and await notices(world.db) == []


async def _nothing_in_flight(session: object) -> dict[str, int]:
    return {}


async def test_a_target_that_cannot_be_read_is_an_error_not_drift(sqlite_world: World) -> None:
    azure(sqlite_world, Replay(server_error()))
    findings = await reconcile.reconcile(sqlite_world.db, sqlite_world.providers, sqlite_world.policy)
    error = next(f for f in findings if f.subscription_id == SUB)
    assert error.status == "error" and "HTTP 500" in (error.message or "")
    assert await sqlite_world.events("partner.drift") == [] and await notices(sqlite_world.db) == []


async def test_webhook_targets_are_unchecked(sqlite_url: str) -> None:
    async for world in make_world(
        sqlite_url,
        column="webhook",
        DPOR_WEBHOOK_URL="http://127.0.0.1:9/dpor",
        DPOR_WEBHOOK_SECRET="s",
    ):
        findings = await reconcile.reconcile(world.db, world.providers, world.policy)
        unchecked = next(f for f in findings if f.subscription_id == SUB)
        assert unchecked.status == "unchecked" and "only told of changes" in (unchecked.message or "")
        assert await world.events("partner.drift") == []


def test_drift_text_escapes_names() -> None:
    facts = {
        "subscription_id": SUB,
        "name": "<!channel> prod & co",
        "alias": "p<",
        "provider": "azure",
        "recorded": OLD,
        "recorded_name": "Fabrikam",
        "observed": NEW,
        "observed_name": "<@U123> Contoso",
    }
    text = drift_text(facts)
    assert "<!channel>" not in text and "&lt;!channel&gt; prod &amp; co" in text
    assert "&lt;@U123&gt; Contoso" in text and "(p&lt;)" in text


# The command operators run from cron.


def run_cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("DPOR_PROVIDER", "DPOR_NOTIFY_CHANNELS", "DPOR_RECONCILE_EVERY", "DPOR_WEBHOOK_URL"):
        monkeypatch.delenv(name, raising=False)

    async def seed() -> None:
        async for world in make_world(database_url, column="azure"):
            await record(world.db, SUB, OLD)

    asyncio.run(seed())
    return {
        "DATABASE_URL": database_url,
        "DPOR_NOTIFY_CHANNELS": NOTIFY,
        "DPOR_AZURE_CREDENTIALS_FILE": identities_file(tmp_path),
    }


def test_reconcile_command_exits_3_on_drift_and_prints_it(
    monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str], database_url: str
) -> None:
    replay = install(monkeypatch, Replay())
    replay.otherwise = ok(NEW, "Contoso MSP")

    code, out, err = run_cli(monkeypatch, cli_env, "reconcile")
    assert code == 3, err
    header, row, summary = out.strip().splitlines()
    assert header.split() == ["SUBSCRIPTION", "ALIAS", "PROVIDER", "RECORD", "TARGET", "STATUS", "DETAIL"]
    assert row.split()[:6] == [SUB, "prod", "azure", OLD, NEW, "drift"]
    assert "new: recorded and announced" in row
    assert summary == "2 subscriptions checked: 1 drifted (1 new), 0 could not be read"

    code, out, _ = run_cli(monkeypatch, cli_env, "reconcile")
    assert code == 3 and "known since" in out and "(0 new)" in out

    async def recorded() -> tuple[list[str], int]:
        db = Database(database_url)
        async with db.read() as session:
            actors = list(
                (
                    await session.scalars(
                        select(AuditEvent.actor).where(AuditEvent.action == "partner.drift")
                    )
                ).all()
            )
            rows = await session.scalar(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.kind == "notice")
            )
        await db.dispose()
        return actors, rows or 0

    actors, rows = asyncio.run(recorded())
    assert len(actors) == 1 and actors[0].startswith("cli:") and rows == 1


def test_reconcile_command_exits_0_in_sync_and_1_when_unreadable(
    monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str]
) -> None:
    replay = install(monkeypatch, Replay(ok(OLD, "Fabrikam Consulting"), server_error()))
    code, out, _ = run_cli(monkeypatch, cli_env, "reconcile")
    assert code == 0 and out.strip() == "2 subscriptions checked: 0 drifted (0 new), 0 could not be read"

    code, out, err = run_cli(monkeypatch, cli_env, "reconcile")
    assert code == 1 and "error" in out and "HTTP 500" in out
    assert err.strip() == "error: 1 subscriptions could not be read; see DETAIL above"
    assert len(replay.arm) == 2


def test_subscriptions_add_sets_the_provider(
    monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str], database_url: str
) -> None:
    code, out, _ = run_cli(
        monkeypatch,
        cli_env,
        "subscriptions",
        "add",
        OTHER,
        "--name",
        "Dev",
        "--alias",
        "dev",
        "--provider",
        "webhook",
    )
    assert code == 0 and out.strip() == f"updated subscription {OTHER}"
    code, out, _ = run_cli(
        monkeypatch, cli_env, "subscriptions", "add", OTHER, "--name", "Dev", "--alias", "dev"
    )
    assert code == 0 and out.strip() == f"unchanged: subscription {OTHER}"  # leaving --provider out keeps it
    code, _, err = run_cli(
        monkeypatch, cli_env, "subscriptions", "add", OTHER, "--name", "Dev", "--provider", "gcp"
    )
    names = ", ".join(repr(name) for name in (*PROVIDER_NAMES, *OLD_NAMES))  # the old name is taken too
    assert code == 2 and f"'gcp' is not one of {names}" in err

    async def provider() -> tuple[str | None, dict]:
        db = Database(database_url)
        async with db.read() as session:
            sub = await session.get(Subscription, OTHER)
            event = (
                await session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.subscription_id == OTHER)
                    .order_by(AuditEvent.seq.desc())
                )
            ).first()
        await db.dispose()
        assert sub is not None and event is not None
        return sub.provider, event.data

    column, data = asyncio.run(provider())
    assert column == "webhook" and data["provider"] == "webhook" and data["updated"] is True


async def test_applying_requests_block_nothing_else(sqlite_world: World) -> None:
    # A failed request is not open: reconcile reads the target again.
    azure(sqlite_world, Replay(ok(OLD, "Fabrikam Consulting")))
    async with sqlite_world.db.write(serial=False) as session:
        session.add(
            ChangeRequest(
                team_id=TEAM,
                subscription_id=SUB,
                partner_id=NEW,
                requester_id="U0ADMIN",
                status="failed",
                expires_at=(await sqlite_world.subscription()).created_at,
            )
        )
    findings = await reconcile.reconcile(sqlite_world.db, sqlite_world.providers, sqlite_world.policy)
    assert next(f for f in findings if f.subscription_id == SUB).status == "in sync"
    assert json.dumps([f.status for f in findings]) == '["in sync", "in sync"]'
