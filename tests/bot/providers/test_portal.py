"""The portal provider alone and through the Applier, and the PAL provider's rename (azure -> azure-pal).

Portal: apply never pretends to have set anything (AwaitingAttestation); the Applier leaves the request
applying with `awaiting: attestation` in apply.started and the request's result; `current` is what an
owner last attested (who and when), and nothing before. Rename: both names build the PAL provider, the
old one logs one deprecation line per process and keeps its name where operators see it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bot import attest, clicks, providers
from bot.cli import cli
from bot.errors import AlreadyDecided, BadInput, NotOwner
from bot.providers import CannotRead, Providers
from bot.providers.azure import AzureProvider
from bot.providers.portal import AwaitingAttestation, PortalProvider
from bot.settings import ConfigError, load_settings
from storage.db import Database
from storage.models import OutboxMessage, Subscription
from tests.bot.providers.conftest import ADMIN, NEW, OWNER, SUB, TEAM, World, make_world
from tests.bot.providers.pal import identities_file


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    async for w in make_world(database_url, DPOR_PROVIDER="portal", DPOR_AZURE_CLOUD="china"):
        yield w


async def test_apply_awaits_an_attestation_and_current_knows_nothing_before_one(world: World) -> None:
    portal = world.providers.get("portal")
    assert isinstance(portal, PortalProvider) and portal.name == "portal"
    with pytest.raises(AwaitingAttestation, match="Azure portal"):
        await portal.apply(SUB, NEW)
    with pytest.raises(CannotRead, match="no owner has attested"):
        await portal.current(SUB)
    assert portal.awaiting() == {
        "awaiting": "attestation",
        "provider": "portal",
        "portal": "https://portal.azure.cn",
    }


async def test_the_applier_leaves_it_applying_until_an_owner_attests(world: World) -> None:
    rid = await world.approved()
    await world.drive(world.worker())
    req = await world.request(rid)
    assert req.status == "applying" and req.result["awaiting"] == "attestation" and req.reminded_at is None
    (started,) = await world.events("apply.started")
    assert started.data["awaiting"] == "attestation" and started.data["portal"] == "https://portal.azure.cn"
    assert (await world.apply_row(rid)).status == "done"
    assert not await world.events("apply.succeeded")
    assert (await world.subscription()).partner_id is None

    # Bad notes and people without the owner role are refused before anything moves.
    for note, error in (("", BadInput), ("x" * 501, BadInput)):
        with pytest.raises(error):
            await attest.done(world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, note=note)
    with pytest.raises(NotOwner):
        await attest.done(world.db, world.policy, request_id=rid, team_id=TEAM, user_id=ADMIN, note="me")
    assert (await world.request(rid)).status == "applying"
    assert [e.data["act"] for e in await world.events("approval.denied")] == ["attest"]

    await attest.done(
        world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, note="Saved; it said Contoso"
    )
    req = await world.request(rid)
    assert req.status == "applied" and (await world.subscription()).partner_id == NEW
    (succeeded,) = await world.events("apply.succeeded")
    assert (
        succeeded.actor == OWNER
        and succeeded.data["attested"] is True
        and succeeded.data["note"] == "Saved; it said Contoso"
    )

    state = await world.providers.get("portal").current(SUB)
    assert state.partner_id == NEW and state.partner_name == "Contoso MSP"
    assert state.identity == {"attested_by": OWNER, "attested_at": succeeded.at.isoformat(timespec="seconds")}
    with pytest.raises(AlreadyDecided, match="already approved and applied"):
        await attest.could_not(
            world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, reason="late"
        )


async def test_another_providers_applying_request_cannot_be_attested(database_url: str) -> None:
    async for world in make_world(database_url):  # the ledger
        rid = await world.approved()
        # Approved, its apply row not delivered yet: not awaiting anything a person does.
        with pytest.raises(AlreadyDecided, match="approved"):
            await attest.done(
                world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, note="done"
            )
        await world.drive(world.worker())
        assert (await world.request(rid)).status == "applied"
        assert (await world.request(rid)).result.get("attested") is None


async def test_the_old_name_builds_pal_and_says_so_once(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "_warned", set())  # a fresh process
    caplog.set_level(logging.WARNING, "dpor.providers")
    async for world in make_world(
        sqlite_url, DPOR_PROVIDER="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        old = world.providers.get("azure")
        Providers(world.settings, world.db)  # another Providers in the same process: no second line
        new = world.providers.get("azure-pal")
        assert isinstance(old, AzureProvider) and isinstance(new, AzureProvider)
        assert (old.name, new.name) == ("azure", "azure-pal")  # metrics and reconcile keep what is configured
    lines = [r.getMessage() for r in caplog.records if r.name == "dpor.providers"]
    assert lines == [
        "DPOR_PROVIDER=azure is the old name of azure-pal; it keeps working, but write azure-pal "
        "(in DPOR_PROVIDER and `dpor-bot subscriptions add --provider`)"
    ]


async def test_the_new_name_logs_nothing(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(providers, "_warned", set())
    caplog.set_level(logging.WARNING, "dpor.providers")
    async for world in make_world(
        sqlite_url, DPOR_PROVIDER="azure-pal", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        assert world.providers.get("azure-pal").name == "azure-pal"
    assert not [r for r in caplog.records if r.name == "dpor.providers"]


def test_settings_take_both_names_and_refuse_others() -> None:
    for name in ("azure-pal", "azure", "portal"):
        assert load_settings(DPOR_PROVIDER=name).provider == name
    with pytest.raises(
        ConfigError, match=r"DPOR_PROVIDER: expected one of .*azure-pal \(old name: azure\).*portal"
    ):
        load_settings(DPOR_PROVIDER="gcp")


async def test_retry_after_could_not_marks_it_awaiting_again(world: World) -> None:
    rid = await world.approved()
    await world.drive(world.worker())
    await attest.could_not(
        world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, reason="not an EA subscription"
    )
    req = await world.request(rid)
    assert (
        req.status == "failed"
        and req.error == "it could not be set in the Azure portal: not an EA subscription"
    )
    await clicks.retry(world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER)
    await world.drive(world.worker())
    req = await world.request(rid)
    assert req.status == "applying" and req.result["awaiting"] == "attestation"
    async with world.db.read() as session:
        applies = await session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.kind == "apply")
        )
    assert applies == 2


def test_subscriptions_add_takes_the_old_name_and_stores_the_new(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.delenv("DPOR_PROVIDER", raising=False)
    runner = CliRunner()
    for given, stored in (("azure", "azure-pal"), ("portal", "portal"), ("azure-pal", "azure-pal")):
        result = runner.invoke(cli, ["subscriptions", "add", SUB, "--name", "Prod", "--provider", given])
        assert result.exit_code == 0, result.output
        assert ("old name of azure-pal" in result.stderr) == (given == "azure")

        async def column() -> str | None:
            db = Database(sqlite_url)
            try:
                async with db.read() as session:
                    return (await session.get(Subscription, SUB)).provider
            finally:
                await db.dispose()

        assert asyncio.run(column()) == stored


def test_the_reconcile_command_lists_an_attested_subscription(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def attested() -> str:
        async for world in make_world(sqlite_url, DPOR_PROVIDER="portal"):
            rid = await world.approved()
            await world.drive(world.worker())
            note = "Saved in the portal"
            await attest.done(world.db, world.policy, request_id=rid, team_id=TEAM, user_id=OWNER, note=note)
            (done,) = await world.events("apply.succeeded")
            return done.at.isoformat(timespec="seconds")
        raise AssertionError("no world")

    at = asyncio.run(attested())
    for name, value in {"DATABASE_URL": sqlite_url, "DPOR_PROVIDER": "portal"}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["reconcile"])
    assert result.exit_code == 0, result.output  # attested is neither drift nor an error
    (row,) = [line for line in result.stdout.splitlines() if line.startswith(SUB)]
    assert "portal" in row and "attested" in row and f"attested by {OWNER} at {at}" in row
    assert "drift" not in result.stdout.split("subscriptions checked")[0].lower()
