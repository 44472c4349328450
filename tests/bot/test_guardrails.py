"""Guard rails in the domain (issue 13), on SQLite and PostgreSQL: the last owner stays unless forced, a
request nobody could approve enough is refused, IDs are kept in ASCII, role changes are announced."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from bot import directory, lifecycle, watches
from bot.errors import InvalidPartnerId, InvalidSubscriptionId
from bot.owners import LastOwner, TooFewApprovers
from storage.db import Database
from storage.models import AuditEvent, OutboxMessage, Partner, RoleAssignment, Subscription
from tests.bot.world import (
    ADMIN,
    NOTIFY_CHANNEL,
    OPERATOR,
    OTHER_OWNER,
    OTHER_SUB,
    OWNER,
    PARTNER,
    POLICY,
    SUB,
    TEAM,
    counts,
    mark,
    refused_quietly,
    seed,
    written_since,
)
from tests.processes import dpor_bot, ok, query, refused

WATCHER = "CWATCHPROD"
WATCHER_ALL = "CWATCHALL"


async def assignments(db: Database) -> list[tuple[str, str, str]]:
    async with db.read() as session:
        rows = await session.execute(
            select(RoleAssignment.user_id, RoleAssignment.role, RoleAssignment.scope).order_by(
                RoleAssignment.user_id, RoleAssignment.scope
            )
        )
        return [tuple(row) for row in rows]


# --- the last owner ----------------------------------------------------------------------------------


async def test_the_last_owner_of_a_subscription_cannot_be_revoked(db: Database) -> None:
    await seed(db, owners=(OWNER,))
    before = await assignments(db)
    refusal = await refused_quietly(
        db, LastOwner, directory.revoke_role(db, OWNER, "owner", "prod", actor=OWNER, notify=[NOTIFY_CHANNEL])
    )
    assert f"<@{OWNER}> is the last owner of Production (`{SUB}`)" in refusal.message
    assert "Grant another owner first: `/dpor role grant @someone owner prod`" in refusal.message
    assert await assignments(db) == before

    # With a second owner (here on every subscription) the first may go.
    await directory.grant_role(db, OTHER_OWNER, "owner", "*", actor=OPERATOR)
    assert await directory.revoke_role(db, OWNER, "owner", "prod", actor=OTHER_OWNER) is True
    # ... and then the other is the last one: on `*`, both subscriptions would be left without an owner.
    refusal = await refused_quietly(
        db, LastOwner, directory.revoke_role(db, OTHER_OWNER, "owner", None, actor=OTHER_OWNER)
    )
    assert f"Revoking <@{OTHER_OWNER}>'s owner role on every subscription would leave 2" in refusal.message
    assert refusal.orphans == [SUB, OTHER_SUB]


async def test_revoking_an_owner_on_every_subscription_checks_each(db: Database) -> None:
    await seed(db, owners=(OWNER,))
    await directory.grant_role(db, OTHER_OWNER, "owner", None, actor=OPERATOR)
    # Production keeps OWNER; Staging has nobody but OTHER_OWNER's `*` role.
    refusal = await refused_quietly(
        db, LastOwner, directory.revoke_role(db, OTHER_OWNER, "owner", "all", actor=OPERATOR)
    )
    assert f"last owner of Staging (`{OTHER_SUB}`)" in refusal.message
    assert "owner stage`" in refusal.message
    assert refusal.orphans == [OTHER_SUB]

    # Nobody left on either: both are named, and the way out is an owner on every subscription.
    await directory.grant_role(db, OWNER, "owner", None, actor=OPERATOR)
    async with db.write() as session:  # set up: OWNER's own role on Production gone, the `*` ones stay
        await session.execute(RoleAssignment.__table__.delete().where(RoleAssignment.scope == SUB))
    await directory.revoke_role(db, OWNER, "owner", "*", actor=OPERATOR)
    refusal = await refused_quietly(
        db, LastOwner, directory.revoke_role(db, OTHER_OWNER, "owner", "*", actor=OPERATOR)
    )
    assert "would leave 2 subscriptions with no owner: Production" in refusal.message
    assert "Staging" in refusal.message and "owner all`" in refusal.message


async def test_admins_are_not_guarded_and_a_revoke_that_changes_nothing_passes(db: Database) -> None:
    await seed(db, owners=(OWNER,))
    assert await directory.revoke_role(db, ADMIN, "admin", "prod", actor=OWNER) is True
    assert await directory.revoke_role(db, ADMIN, "owner", "prod", actor=OWNER) is False


async def test_forcing_the_last_owner_out_is_audited_and_announced(db: Database) -> None:
    await seed(db, owners=(OWNER,))
    since = await mark(db)
    result = await directory.change_role(
        db, OWNER, "owner", "prod", grant=False, actor="cli:alice", force=True, notify=[NOTIFY_CHANNEL]
    )
    assert (result.changed, result.left_without_owner) == (True, (SUB,))
    assert await assignments(db) == [(ADMIN, "admin", SUB)]
    written = await written_since(db, since)
    assert [(e.action, e.actor, e.data) for e in written.audit] == [
        (
            "role.revoked",
            "cli:alice",
            {"user_id": OWNER, "role": "owner", "scope": SUB, "forced": True, "left_without_owner": [SUB]},
        )
    ]
    ((kind, payload),) = written.outbox
    assert (kind, payload["channel"], payload["topic"]) == ("notice", NOTIFY_CHANNEL, "role")
    assert payload["facts"]["forced"] is True
    assert payload["facts"]["left_without_owner"] == ["Production"]


async def test_force_that_overrides_nothing_records_no_force(db: Database) -> None:
    await seed(db)
    since = await mark(db)
    await directory.change_role(db, OWNER, "owner", "prod", grant=False, actor="cli:alice", force=True)
    (event,) = (await written_since(db, since)).audit
    assert event.data == {"user_id": OWNER, "role": "owner", "scope": SUB}


# --- role changes announced ---------------------------------------------------------------------------


async def test_role_changes_reach_the_channels_watching_their_scope(db: Database) -> None:
    await seed(db)
    await watches.watch(db, team_id=TEAM, channel_id=WATCHER, subscription="prod", user_id=OWNER)
    await directory.grant_role(db, OWNER, "owner", "*", actor=OPERATOR)
    await watches.watch(db, team_id=TEAM, channel_id=WATCHER_ALL, subscription="all", user_id=OWNER)

    since = await mark(db)
    await directory.grant_role(db, "UNEW", "admin", "prod", actor=OWNER, notify=[NOTIFY_CHANNEL])
    written = await written_since(db, since)
    assert [(kind, p["channel"]) for kind, p in written.outbox] == [
        ("notice", NOTIFY_CHANNEL),
        ("notice", WATCHER),
        ("notice", WATCHER_ALL),
    ]
    facts = written.outbox[0][1]["facts"]
    assert facts == {
        "user_id": "UNEW",
        "role": "admin",
        "scope": SUB,
        "subscription": "Production",
        "alias": "prod",
        "actor": OWNER,
        "granted": True,
        "forced": False,
        "left_without_owner": [],
        "left_without_owner_count": 0,
    }

    # A change on every subscription: DPOR_NOTIFY_CHANNELS and the channels watching all, not one's.
    since = await mark(db)
    await directory.revoke_role(db, "UNEW", "admin", "prod", actor=OWNER, notify=[NOTIFY_CHANNEL])
    await directory.grant_role(db, "UNEW", "admin", None, actor=OWNER, notify=[NOTIFY_CHANNEL])
    written = await written_since(db, since)
    channels = [(p["facts"]["granted"], p["facts"]["scope"], p["channel"]) for _, p in written.outbox]
    assert channels == [
        (False, SUB, NOTIFY_CHANNEL),
        (False, SUB, WATCHER),
        (False, SUB, WATCHER_ALL),
        (True, "*", NOTIFY_CHANNEL),
        (True, "*", WATCHER_ALL),
    ]
    assert written.outbox[-1][1]["facts"]["subscription"] is None

    # Nothing changed, nothing said.
    since = await mark(db)
    assert (
        await directory.grant_role(db, "UNEW", "admin", None, actor=OWNER, notify=[NOTIFY_CHANNEL]) is False
    )
    assert (await written_since(db, since)).outbox == []


# --- too few approvers ---------------------------------------------------------------------------------


async def test_a_request_fewer_owners_can_approve_than_required_is_refused(db: Database) -> None:
    await seed(db)  # two owners of Production; the requester is its admin
    three = replace(POLICY, required_approvals=3)
    refusal = await refused_quietly(
        db,
        TooFewApprovers,
        lifecycle.create_request(
            db, three, team_id=TEAM, user_id=ADMIN, subscription="prod", partner=PARTNER
        ),
    )
    assert "Only 2 people can approve requests for Production" in refusal.message
    assert "needs 3 approvals (DPOR_REQUIRED_APPROVALS)" in refusal.message
    assert "`/dpor role grant @someone owner prod`" in refusal.message
    assert "lowers DPOR_REQUIRED_APPROVALS" in refusal.message

    two = replace(POLICY, required_approvals=2)
    # An owner asking: the other owner is the only one who can approve it (self-approval is off).
    refusal = await refused_quietly(
        db,
        TooFewApprovers,
        lifecycle.create_request(db, two, team_id=TEAM, user_id=OWNER, subscription="prod", partner=PARTNER),
    )
    assert "Only 1 person can approve" in refusal.message
    assert "requesters do not approve their own requests" in refusal.message
    # With self-approval on, the requester counts.
    selfish = replace(two, allow_self_approval=True)
    req = await lifecycle.create_request(
        db, selfish, team_id=TEAM, user_id=OWNER, subscription="prod", partner=PARTNER
    )
    assert req.status == "pending"


async def test_a_request_nobody_can_approve_is_refused(db: Database) -> None:
    await seed(db)
    await directory.grant_role(db, ADMIN, "admin", OTHER_SUB, actor=OPERATOR)  # Staging has no owner
    refusal = await refused_quietly(
        db,
        TooFewApprovers,
        lifecycle.create_request(
            db, POLICY, team_id=TEAM, user_id=ADMIN, subscription="stage", partner=PARTNER
        ),
    )
    assert refusal.message.startswith("Nobody can approve requests for Staging")
    # Two owners, two approvals, an admin asking: enough.
    two = replace(POLICY, required_approvals=2)
    req = await lifecycle.create_request(
        db, two, team_id=TEAM, user_id=ADMIN, subscription="prod", partner=PARTNER
    )
    assert req.status == "pending"


# --- IDs in ASCII ---------------------------------------------------------------------------------------

FULLWIDTH_PARTNER = "４９７７９８５"
ARABIC_INDIC_PARTNER = "٤٩٧٧٩٨٥"
FULLWIDTH_SUB = "１１１１１１１１－２２２２－３３３３－４４４４－５５５５５５５５５５５５"
NEW_SUB = "ａｂｃｄｅｆ００－０００１－０００２－０００３－ＡＢＣＤＥＦ０００００４"


def test_ids_are_folded_to_ascii_or_refused() -> None:
    assert directory.partner_id(FULLWIDTH_PARTNER) == "4977985"
    assert directory.partner_id(" 𝟒𝟗𝟕𝟕𝟗𝟖𝟓 ") == "4977985"  # mathematical digits fold too
    assert directory.subscription_id(NEW_SUB) == "abcdef00-0001-0002-0003-abcdef000004"
    for bad in (ARABIC_INDIC_PARTNER, "४९७७९८५", "49٧٧985"):
        with pytest.raises(InvalidPartnerId, match="characters other than ASCII"):
            directory.partner_id(bad)
    with pytest.raises(InvalidPartnerId) as caught:
        directory.partner_id("12345")
    assert "other than ASCII" not in caught.value.message
    with pytest.raises(InvalidSubscriptionId, match="characters other than ASCII"):
        directory.subscription_id("١١١١١١١١-2222-3333-4444-555555555555")


async def test_ids_are_stored_in_ascii(db: Database) -> None:
    await directory.add_partner(db, FULLWIDTH_PARTNER, "Contoso", actor=OPERATOR)
    await directory.upsert_subscriptions(db, [directory.SubscriptionRow(NEW_SUB, "New")], actor=OPERATOR)
    async with db.read() as session:
        assert list(await session.scalars(select(Partner.partner_id))) == ["4977985"]
        assert list(await session.scalars(select(Subscription.id))) == [
            "abcdef00-0001-0002-0003-abcdef000004"
        ]
    with pytest.raises(InvalidPartnerId):
        await directory.add_partner(db, ARABIC_INDIC_PARTNER, "Contoso", actor=OPERATOR)
    assert (await counts(db))["audit_events"] == 2


async def test_a_request_in_fullwidth_ids_names_the_ascii_ones(db: Database) -> None:
    await seed(db)
    async with db.read() as session:
        assert (await directory.resolve_subscription(session, FULLWIDTH_SUB)).id == SUB
        with pytest.raises(InvalidSubscriptionId, match="other than ASCII"):
            await directory.resolve_subscription(session, "١١١١١١١١-2222-3333-4444-555555555555")
    req = await lifecycle.create_request(
        db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=FULLWIDTH_SUB, partner=FULLWIDTH_PARTNER
    )
    assert (req.subscription_id, req.partner_id) == (SUB, PARTNER)
    await refused_quietly(
        db,
        InvalidPartnerId,
        lifecycle.create_request(
            db, POLICY, team_id=TEAM, user_id=ADMIN, subscription="stage", partner=ARABIC_INDIC_PARTNER
        ),
    )


# --- the operator's CLI ---------------------------------------------------------------------------------


def test_the_cli_refuses_the_last_owner_unless_forced(sqlite_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=sqlite_url, cwd=tmp_path, env={"DPOR_NOTIFY_CHANNELS": NOTIFY_CHANNEL})

    assert ok(run("subscriptions", "add", FULLWIDTH_SUB, "--name", "Prod", "--alias", "prod")) == (
        f"added subscription {SUB}\n"
    )
    assert ok(run("partners", "add", FULLWIDTH_PARTNER, "--name", "Contoso")) == f"saved partner {PARTNER}\n"
    assert "other than ASCII" in refused(run("partners", "add", ARABIC_INDIC_PARTNER, "--name", "Contoso"))
    ok(run("roles", "grant", OWNER, "owner", "--subscription", "prod"))

    line = refused(run("roles", "revoke", OWNER, "owner", "--subscription", "prod"))
    assert f"is the last owner of Prod (`{SUB}`)" in line
    assert "`dpor-bot roles grant SLACK_USER_ID owner --subscription prod`" in line
    assert line.endswith("Or revoke it anyway with --force (audited).")
    assert query(sqlite_url, select(RoleAssignment.user_id)) == [(OWNER,)]

    forced = run("roles", "revoke", OWNER, "owner", "--subscription", "prod", "--force")
    assert ok(forced) == f"revoked owner from {OWNER} on {SUB}\n"
    assert forced.stderr == f"warning: forced: no owner is left on {SUB}\n"
    assert query(sqlite_url, select(RoleAssignment.user_id)) == []
    (data,) = query(sqlite_url, select(AuditEvent.data).where(AuditEvent.action == "role.revoked"))
    assert data[0]["forced"] is True and data[0]["left_without_owner"] == [SUB]
    (payload,) = query(sqlite_url, select(OutboxMessage.payload).where(OutboxMessage.kind == "notice"))[-1:]
    assert payload[0]["channel"] == NOTIFY_CHANNEL and payload[0]["facts"]["forced"] is True
