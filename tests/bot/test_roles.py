"""Role sources: the bot's table (local) and Azure RBAC (azure), ARM replayed through azure-core's
transport hook with the REST spec's shapes (tests/bot/providers/arm_replay.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot import directory, people, policy
from bot.azure_roles import AzureRoles, role_source
from bot.errors import NotAuthorised
from bot.providers.arm import Arm
from bot.roles import LOCAL_ROLES, NotLinked, RolesUnavailable
from bot.settings import ConfigError, Settings, load_settings
from storage.db import Database
from tests.bot.providers.arm_replay import (
    CONTRIBUTOR,
    MANAGEMENT_GROUP,
    READER,
    UAA,
    FakeArm,
    FakeCredential,
    forbidden,
    throttled,
)
from tests.bot.providers.arm_replay import OWNER as OWNER_ROLE

PROD = "11111111-2222-3333-4444-555555555555"
DEV = "66666666-7777-8888-9999-000000000000"
ALICE, BOB, CAROL, DAN = "U0ALICE", "U0BOB", "U0CAROL", "U0DAN"
OID = {
    ALICE: "0b000000-0000-4000-8000-000000000001",
    BOB: "0b000000-0000-4000-8000-000000000002",
    CAROL: "0b000000-0000-4000-8000-000000000003",
}
GROUP = "0b000000-0000-4000-8000-0000000000aa"
CUSTOM = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"


def settings(database_url: str, **env: Any) -> Settings:
    return Settings(DATABASE_URL=database_url, DPOR_ROLE_SOURCE="azure", **env)


@pytest.fixture
async def world(db: Database) -> AsyncIterator[Database]:
    await directory.upsert_subscriptions(
        db,
        [directory.SubscriptionRow(PROD, "Production EU", "prod"), directory.SubscriptionRow(DEV, "Dev")],
        actor="test",
    )
    await people.link(db, [people.Link(user, oid) for user, oid in OID.items()], actor="test")
    yield db


def arm_with(fake: FakeArm, config: Settings) -> Arm:
    return Arm(config, transport=fake, credential=FakeCredential())


def source(db: Database, fake: FakeArm, **env: Any) -> AzureRoles:
    config = settings("sqlite:///unused.db", **env)  # the source reads `db`, not this URL
    return AzureRoles(db, config, arm_with(fake, config))


@pytest.fixture
def fake() -> FakeArm:
    arm = FakeArm()
    arm.add(f"/subscriptions/{PROD}", OID[ALICE], OWNER_ROLE)
    arm.add(f"/subscriptions/{DEV}", OID[ALICE], OWNER_ROLE)
    arm.add(f"/subscriptions/{PROD}", OID[BOB], CONTRIBUTOR)
    arm.add(f"/subscriptions/{PROD}/resourceGroups/rg", OID[CAROL], CONTRIBUTOR)  # below: grants nothing here
    arm.add("/", OID[CAROL], READER)
    arm.add(MANAGEMENT_GROUP, GROUP, UAA, principal_type="Group")
    arm.groups[OID[CAROL]] = [GROUP]
    return arm


async def roles_of(src: AzureRoles, user: str, sub: str) -> frozenset[str]:
    await src.prepare(user, [sub])
    async with src.db.read() as session:
        return await src.roles(session, user, sub)


async def test_owner_and_contributor_become_owner_and_admin(world: Database, fake: FakeArm) -> None:
    src = source(world, fake)
    assert await roles_of(src, ALICE, PROD) == {"owner"}
    assert await roles_of(src, BOB, PROD) == {"admin"}
    # Contributor on a resource group and Reader at the root give nothing on the subscription.
    assert await roles_of(src, CAROL, PROD) == frozenset()
    assert await roles_of(src, BOB, DEV) == frozenset()
    async with world.read() as session:
        assert await src.holders(session, "owner", PROD) == [ALICE]
        assert await src.holders(session, "admin", PROD) == [BOB]
        # `*`: held on every subscription.
        assert await src.roles(session, ALICE, "*") == {"owner"}
        assert await src.roles(session, BOB, "*") == frozenset()


async def test_the_approver_roles_are_configurable(world: Database, fake: FakeArm) -> None:
    """User Access Administrator, held through a group on a management group, approves when named."""
    src = source(world, fake, DPOR_AZURE_APPROVER_ROLES=f"Owner, user access administrator, {CUSTOM}")
    assert await roles_of(src, CAROL, PROD) == {"owner"}
    fake.add(f"/subscriptions/{DEV}", OID[BOB], CUSTOM)
    assert await roles_of(src, BOB, DEV) == {"owner"}


async def test_the_policy_checks_through_the_source(world: Database, fake: FakeArm) -> None:
    src = source(world, fake)
    await src.prepare(BOB, [PROD])
    async with world.read() as session:
        sub = await directory.store.subscription_by_id(session, PROD)
        await policy.check(session, "request", BOB, sub, roles=src)
        with pytest.raises(NotAuthorised):
            await policy.check(session, "subscribe", "U0NOBODY", sub, roles=src)
        # The bot's own table knows none of them.
        with pytest.raises(NotAuthorised):
            await policy.check(session, "request", BOB, sub, roles=LOCAL_ROLES)


async def test_an_unlinked_person_is_told_the_command(world: Database, fake: FakeArm) -> None:
    src = source(world, fake)
    with pytest.raises(NotLinked) as refused:
        await src.prepare("U0NEW", [PROD])
    assert "dpor-bot people link U0NEW YOUR_OBJECT_ID_OR_UPN" in refused.value.message
    assert fake.seen == []


async def test_the_cache_holds_for_its_window_then_asks_again(world: Database, fake: FakeArm) -> None:
    src = source(world, fake, DPOR_AZURE_ROLE_CACHE="1")
    assert await roles_of(src, ALICE, PROD) == {"owner"}
    asked = len(fake.seen)
    for row in fake.on(PROD):
        if row["properties"]["principalId"] == OID[ALICE]:
            fake.rows.pop(row["id"].lower())
    assert await roles_of(src, ALICE, PROD) == {"owner"}  # within the window: cached
    assert len(fake.seen) == asked
    await asyncio.sleep(1.1)
    assert await roles_of(src, ALICE, PROD) == frozenset()  # revoked in Azure, seen after the window


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            forbidden("Microsoft.Authorization/roleAssignments/read", f"/subscriptions/{PROD}"),
            "roleAssignments/read",
        ),
        (throttled(7), "dpor-bot could not read the roles from Azure"),
    ],
)
async def test_arm_errors_refuse_and_are_not_cached(
    world: Database, fake: FakeArm, answer: Any, said: str
) -> None:
    src = source(world, fake)
    fake.fail(answer)
    with pytest.raises(RolesUnavailable) as refused:
        await roles_of(src, ALICE, PROD)
    assert said in refused.value.message and "replayed-arm-token" not in refused.value.message
    assert await roles_of(src, ALICE, PROD) == {"owner"}  # the next try asks again


async def test_a_slow_arm_is_waited_for_briefly_and_fills_the_cache(world: Database, fake: FakeArm) -> None:
    src = source(world, fake, DPOR_AZURE_ROLE_WAIT="1")
    fake.delay = 1.5
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RolesUnavailable) as refused:
        await src.prepare(ALICE, [PROD])
    assert loop.time() - started < 1.4
    assert "Try again in a few seconds" in refused.value.message
    await asyncio.sleep(0.8)  # the fetch carried on
    fake.delay = 0
    asked = len(fake.seen)
    assert await roles_of(src, ALICE, PROD) == {"owner"}
    assert len(fake.seen) == asked


def test_settings_name_a_bad_role_and_the_local_default(sqlite_url: str) -> None:
    assert load_settings(DATABASE_URL=sqlite_url).role_source == "local"
    assert role_source(load_settings(DATABASE_URL=sqlite_url), Database(sqlite_url)) is LOCAL_ROLES
    with pytest.raises(ConfigError) as bad:
        load_settings(DATABASE_URL=sqlite_url, DPOR_AZURE_APPROVER_ROLES="Owner,Ownr")
    assert str(bad.value).startswith("DPOR_AZURE_APPROVER_ROLES: expected") and "'Ownr'" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        load_settings(DATABASE_URL=sqlite_url, DPOR_ROLE_SOURCE="ldap")
    assert "DPOR_ROLE_SOURCE: expected local or azure" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        load_settings(DATABASE_URL=sqlite_url, DPOR_AZURE_ROLE_WAIT="5s")
    assert "DPOR_AZURE_ROLE_WAIT: expected at most 2.5s" in str(bad.value)
