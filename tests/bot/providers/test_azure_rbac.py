"""The azure-rbac provider: partners credited through role assignments, ARM replayed by FakeArm."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from bot import principals, reconcile
from bot.errors import BadInput
from bot.providers import ProviderError
from bot.providers.azure_rbac import AzureRbacProvider
from bot.settings import ConfigError, Settings
from handlers.messages import drift_text
from storage.models import ManagedAssignment, PartnerPrincipal, Subscription, utcnow
from tests.bot.providers import arm_replay
from tests.bot.providers.arm_replay import CONTRIBUTOR, MANAGEMENT_GROUP, OWNER, READER, FakeArm, install
from tests.bot.providers.conftest import NEW, OLD, SUB, World, make_world, since, when
from tests.processes import dpor_bot, ok, refused, table_rows

SCOPE = f"/subscriptions/{SUB}"
CONTOSO_SP = "c0c0c0c0-0000-4000-8000-00000000c0c0"
CONTOSO_USER = "c1c1c1c1-0000-4000-8000-00000000c1c1"
FABRIKAM_SP = "fafafafa-0000-4000-8000-00000000fafa"
STRANGER = "99999999-0000-4000-8000-000000000099"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeArm:
    return install(monkeypatch, FakeArm(page_size=2))


@pytest.fixture
async def world(database_url: str, fake: FakeArm) -> AsyncIterator[World]:
    async for w in make_world(database_url, DPOR_PROVIDER="azure-rbac"):
        await principals.add_principals(w.db, NEW, [CONTOSO_SP, CONTOSO_USER.upper()], actor="test")
        await principals.add_principals(w.db, OLD, [FABRIKAM_SP], actor="test")
        yield w


def rbac(world: World) -> AzureRbacProvider:
    provider = world.providers.get("azure-rbac")
    assert isinstance(provider, AzureRbacProvider)
    return provider


async def managed(world: World) -> list[ManagedAssignment]:
    async with world.db.read() as session:
        return list((await session.scalars(select(ManagedAssignment))).all())


async def test_apply_creates_removes_reports_and_reads_back(world: World, fake: FakeArm) -> None:
    provider = rbac(world)
    await provider.apply(SUB, OLD)  # Fabrikam first, through dpor-bot
    fabrikam_made = [r["id"] for r in fake.on(SUB)]
    outside = fake.add(MANAGEMENT_GROUP, FABRIKAM_SP, OWNER, principal_type="ServicePrincipal")  # not ours
    unrelated = fake.add(SCOPE, STRANGER, OWNER)

    state = await provider.apply(SUB, NEW)

    on_sub = {
        (r["properties"]["principalId"], r["properties"]["roleDefinitionId"].rsplit("/", 1)[-1])
        for r in fake.on(SUB)
    }
    assert on_sub == {(CONTOSO_SP, CONTRIBUTOR), (CONTOSO_USER, CONTRIBUTOR), (STRANGER, OWNER)}
    assert outside.lower() in fake.rows and unrelated.lower() in fake.rows  # only what dpor-bot made goes
    assert f"DELETE {fabrikam_made[0]}" in fake.calls()

    assert (state.partner_id, state.partner_name) == (NEW, "Contoso MSP")
    made = state.identity["assignments"]
    assert {(a["principal_id"], a["role"]) for a in made} == {
        (CONTOSO_SP, "Contributor"),
        (CONTOSO_USER, "Contributor"),
    }
    assert {a["assignment_id"] for a in made} == {
        r["id"] for r in fake.on(SUB) if r["properties"]["principalId"] != STRANGER
    }
    assert state.detail["removed"] == [
        {"assignment_id": fabrikam_made[0], "partner_id": OLD, "principal_id": FABRIKAM_SP}
    ]
    assert state.detail["other_partners"] == [
        {
            "assignment_id": outside,
            "principal_id": FABRIKAM_SP,
            "role": "Owner",
            "partner_id": OLD,
            "scope": MANAGEMENT_GROUP,
        }
    ]
    rows = {m.assignment_id: m for m in await managed(world)}
    assert rows[fabrikam_made[0]].removed_at is not None
    assert {m.principal_id for m in rows.values() if m.removed_at is None} == {CONTOSO_SP, CONTOSO_USER}
    assert all(m.partner_id == NEW for m in rows.values() if m.removed_at is None)

    again = await provider.apply(SUB, NEW)  # retried: 409 RoleAssignmentExists, the same assignments
    assert {a["assignment_id"] for a in again.identity["assignments"]} == {a["assignment_id"] for a in made}
    assert len(fake.on(SUB)) == 3


async def test_the_whole_request_records_the_assignments(world: World, fake: FakeArm) -> None:
    request_id = await world.approved(NEW)
    await world.drive(world.worker())
    req = await world.request(request_id)
    assert req.status == "applied", req.result
    [event] = await world.events("apply.succeeded")
    assert {a["principal_id"] for a in event.data["identity"]["assignments"]} == {CONTOSO_SP, CONTOSO_USER}
    assert event.data["identity"]["role"] == "Contributor"
    assert (await world.subscription()).partner_id == NEW


async def test_a_partner_without_principal_fails_saying_how_to_add_one(world: World, fake: FakeArm) -> None:
    async with world.db.write(serial=False) as session:
        for row in await session.scalars(select(PartnerPrincipal).where(PartnerPrincipal.partner_id == NEW)):
            await session.delete(row)
    with pytest.raises(ProviderError) as raised:
        await rbac(world).apply(SUB, NEW)
    assert not raised.value.retryable
    assert f'dpor-bot partners add {NEW} --name "Contoso MSP" --principal OBJECT_ID' in raised.value.message
    assert fake.seen == []  # nothing asked of Azure


async def test_forbidden_fails_the_request_with_the_missing_permission(world: World, fake: FakeArm) -> None:
    fake.fail(arm_replay.forbidden("Microsoft.Authorization/roleAssignments/write", SCOPE))
    request_id = await world.approved(NEW)
    await world.drive(world.worker())
    req = await world.request(request_id)
    assert req.status == "failed"
    assert "lacks Microsoft.Authorization/roleAssignments/write on " + SCOPE in (req.error or "")


async def test_throttled_apply_waits_for_retry_after(world: World, fake: FakeArm) -> None:
    fake.fail(arm_replay.throttled(30))
    request_id = await world.approved(NEW)
    started = utcnow()
    await world.drive(world.worker())
    assert (await world.request(request_id)).status == "applying"
    row = await world.apply_row(request_id)
    assert row.status == "pending"
    assert since(row.available_at, started) > 29.0 and when(row.available_at) <= 30.0  # Retry-After
    await world.time_passes(request_id)
    await world.drive(world.worker())
    assert (await world.request(request_id)).status == "applied"


async def test_current_none_one_several_and_reader_is_no_credit(world: World, fake: FakeArm) -> None:
    provider = rbac(world)
    fake.add(SCOPE, FABRIKAM_SP, READER)
    fake.add(f"{SCOPE}/resourceGroups/rg-web", CONTOSO_SP, CONTRIBUTOR)  # below the subscription: no credit
    none = await provider.current(SUB)
    assert (none.partner_id, none.credited) == (None, ())

    fake.add(MANAGEMENT_GROUP, CONTOSO_USER, OWNER)  # inherited from above: credits Contoso
    one = await provider.current(SUB)
    assert (one.partner_id, one.partner_name, one.credited) == (NEW, "Contoso MSP", (NEW,))

    fake.add(SCOPE, FABRIKAM_SP, CONTRIBUTOR)
    several = await provider.current(SUB)
    assert (several.partner_id, several.credited) == (None, tuple(sorted((OLD, NEW))))


async def test_reconcile_reports_a_second_partner_as_several(world: World, fake: FakeArm) -> None:
    await rbac(world).apply(SUB, NEW)
    async with world.db.write(serial=False) as session:  # recorded as an applied request would
        sub = await session.get(Subscription, SUB)
        assert sub is not None
        sub.partner_id = NEW
    [found] = [
        f
        for f in await reconcile.reconcile(world.db, world.providers, world.policy)
        if f.subscription_id == SUB
    ]
    assert found.status == reconcile.IN_SYNC and found.observed == NEW

    fake.add(SCOPE, FABRIKAM_SP, OWNER)  # someone gave Fabrikam's principal Owner in the portal
    [found] = [
        f
        for f in await reconcile.reconcile(world.db, world.providers, world.policy)
        if f.subscription_id == SUB
    ]
    assert found.status == reconcile.DRIFT and found.credited == tuple(sorted((OLD, NEW)))
    assert (
        "several partners" in (found.observed_name or "")
        and "Fabrikam Consulting (1234566)" in found.observed_name
    )
    [event] = await world.events("partner.drift")
    assert event.data["observed_partner_ids"] == sorted((OLD, NEW))
    text = drift_text(
        {
            "subscription_id": SUB,
            "name": "Production EU",
            "provider": "azure-rbac",
            "recorded": NEW,
            "recorded_name": "Contoso MSP",
            "observed": f"{OLD},{NEW}",
            "several": [{"id": OLD, "name": "Fabrikam <Consulting>"}, {"id": NEW, "name": "Contoso MSP"}],
        }
    )
    assert (
        "reports several partners: *Fabrikam &lt;Consulting&gt;* (`1234566`), *Contoso MSP* (`4977985`)"
        in text
    )


async def test_principals_are_validated_and_audited(world: World) -> None:
    with pytest.raises(BadInput, match="is not an object ID"):
        await principals.add_principals(world.db, NEW, [STRANGER, "contoso-sp"], actor="test")
    assert STRANGER not in (await principals.all_principals(world.db))[NEW]  # nothing written
    with pytest.raises(BadInput, match="not in the directory"):
        await principals.add_principals(world.db, "7654321", [STRANGER], actor="test")
    fullwidth = "９９９９９９９９-0000-4000-8000-000000000099"
    assert await principals.add_principals(world.db, NEW, [fullwidth, STRANGER], actor="ops") == [STRANGER]
    events = [e for e in await world.events("partner.principal_added") if e.actor == "ops"]
    assert [e.data for e in events] == [{"partner_id": NEW, "object_id": STRANGER}]


@pytest.mark.parametrize(
    ("role", "error"),
    [
        ("Reader", "Reader earns a partner no Partner Admin Link credit"),
        ("Superuser", "expected Contributor, Owner or a role definition GUID (got 'Superuser')"),
    ],
)
def test_ineligible_or_unknown_role_stops_start_up(role: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        AzureRbacProvider(Settings(DPOR_AZURE_RBAC_ROLE=role), db=None)  # type: ignore[arg-type]


async def test_a_custom_role_is_assigned_and_counts(world: World, fake: FakeArm) -> None:
    custom = "0b5fe924-9a61-425c-96af-cfe6e287ca2d"
    provider = AzureRbacProvider(
        Settings(DPOR_AZURE_RBAC_ROLE=custom.upper(), DATABASE_URL=world.settings.database_url), world.db
    )
    state = await provider.apply(SUB, NEW)
    assert {a["role"] for a in state.identity["assignments"]} == {custom}
    assert all(r["properties"]["roleDefinitionId"].endswith(custom) for r in fake.on(SUB))
    assert (await provider.current(SUB)).partner_id == NEW


def test_cli_partners_add_principal(tmp_path: Path) -> None:
    """`dpor-bot partners add ... --principal` (repeatable): validated first, stored, listed, audited."""
    run = lambda *args: dpor_bot(*args, url=None, cwd=tmp_path)  # noqa: E731 - the default SQLite file
    line = refused(
        run("partners", "add", NEW, "--name", "Contoso MSP", "--principal", CONTOSO_SP, "--principal", "sp-1")
    )
    assert "`sp-1` is not an object ID" in line and "Object ID" in line
    assert "no partners" in ok(run("partners", "list"))  # nothing written
    out = ok(
        run(
            "partners",
            "add",
            NEW,
            "--name",
            "Contoso MSP",
            "--principal",
            CONTOSO_SP.upper(),
            "--principal",
            CONTOSO_USER,
        )
    )
    assert f"linked principal {CONTOSO_SP}" in out and f"linked principal {CONTOSO_USER}" in out
    out = ok(run("partners", "add", NEW, "--name", "Contoso MSP", "--principal", CONTOSO_SP))
    assert f"unchanged: {CONTOSO_SP} already linked" in out
    assert table_rows(ok(run("partners", "list"))) == [
        [NEW, "Contoso", "MSP", f"{CONTOSO_SP},{CONTOSO_USER}"]
    ]
    exported = ok(run("audit", "export"))
    assert exported.count("partner.principal_added") == 2


async def test_removing_a_partner_unlinks_its_principals(world: World) -> None:
    from bot.removals import remove_partner

    assert await remove_partner(world.db, OLD, actor="ops") == "Fabrikam Consulting"
    assert OLD not in await principals.all_principals(world.db)
    [event] = await world.events("partner.removed")
    assert event.data["principals"] == [FABRIKAM_SP]
