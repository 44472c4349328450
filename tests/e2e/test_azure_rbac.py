"""The real bot with DPOR_PROVIDER=azure-rbac over signed HTTP, ARM replayed by FakeArm (transport hook)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from bot import principals, reconcile
from storage.models import AuditEvent, ManagedAssignment, Subscription
from tests.bot.providers.arm_replay import CONTRIBUTOR, FakeArm, install
from tests.bot.providers.arm_replay import OWNER as OWNER_ROLE
from tests.e2e.test_providers import request_and_approve, shown
from tests.harness import ADMIN, NEW_PARTNER, NOTIFY, OLD_PARTNER, OWNER, PROD, Harness, start_harness

CONTOSO_SP = "c0c0c0c0-0000-4000-8000-00000000c0c0"
FABRIKAM_SP = "fafafafa-0000-4000-8000-00000000fafa"
SCOPE = f"/subscriptions/{PROD}"


async def partners_with_principals(harness: Harness) -> None:
    db = harness.bot.db
    await principals.add_principals(db, NEW_PARTNER, [CONTOSO_SP], actor="test")
    await principals.add_principals(db, OLD_PARTNER, [FABRIKAM_SP], actor="test")


async def test_card_says_what_approving_grants_and_apply_moves_the_assignment(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = install(monkeypatch, FakeArm())
    async for harness in start_harness(database_url, DPOR_PROVIDER="azure-rbac"):
        await partners_with_principals(harness)
        # Fabrikam is the partner today, credited through an assignment dpor-bot made earlier.
        fabrikam = fake.add(SCOPE, FABRIKAM_SP, CONTRIBUTOR, principal_type="ServicePrincipal")
        async with harness.bot.db.write(serial=False) as session:
            await session.execute(
                update(Subscription).where(Subscription.id == PROD).values(partner_id=OLD_PARTNER)
            )
        await principals.record(harness.bot.db, PROD, OLD_PARTNER, [(fabrikam, FABRIKAM_SP, CONTRIBUTOR)], [])

        status, body = await harness.command(f"set prod {NEW_PARTNER} Contoso takes over", ADMIN)
        assert status == 200, body
        rid = int(body["text"].split("Request #")[1].split()[0])
        pending = shown(harness, (await harness.card(rid)).ts)
        assert "Contoso MSP's principal gets *Contributor* on *Production EU*" in pending
        assert "Fabrikam Consulting's loses it." in pending

        status, _ = await harness.click("dpor_approve", rid, OWNER)
        assert status == 200
        await harness.settle()

        req = await harness.request(rid)
        assert req.status == "applied", req.error
        assert [r["properties"]["principalId"] for r in fake.on(PROD)] == [CONTOSO_SP]
        assert f"DELETE {fabrikam}" in fake.calls()
        async with harness.bot.db.read() as session:
            rows = {m.principal_id: m for m in (await session.scalars(select(ManagedAssignment))).all()}
            (event,) = (
                await session.scalars(select(AuditEvent).where(AuditEvent.action == "apply.succeeded"))
            ).all()
        assert rows[FABRIKAM_SP].removed_at is not None and rows[CONTOSO_SP].removed_at is None
        assert [a["principal_id"] for a in event.data["identity"]["assignments"]] == [CONTOSO_SP]
        assert event.data["removed"][0]["assignment_id"] == fabrikam
        applied = shown(harness, req.card_ts or "")
        assert "What approving grants" not in applied  # once applied the card says what happened instead


async def test_reconcile_announces_a_second_partner(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = install(monkeypatch, FakeArm())
    async for harness in start_harness(database_url, DPOR_PROVIDER="azure-rbac"):
        await partners_with_principals(harness)
        rid = await request_and_approve(harness)
        assert (await harness.request(rid)).status == "applied"

        fake.add(SCOPE, FABRIKAM_SP, OWNER_ROLE)  # given in the portal, outside dpor-bot
        findings = await reconcile.reconcile(harness.bot.db, harness.bot.providers, harness.bot.policy)
        (found,) = [f for f in findings if f.subscription_id == PROD]
        assert found.status == reconcile.DRIFT and set(found.credited) == {OLD_PARTNER, NEW_PARTNER}
        await harness.settle()
        notices = [json.dumps(m.blocks) + (m.text or "") for m in harness.slack.messages(NOTIFY)]
        assert any(
            "reports several partners: *Fabrikam Consulting* (`1234566`), *Contoso MSP*" in n for n in notices
        )
