"""Guard rails over signed HTTP (issue 13): each refused with the reason and what to do, nothing written;
role changes announced in the channels that watch the subscription."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from bot import policy
from storage import directory as store
from storage.db import Database
from storage.models import ChangeRequest, Partner, RoleAssignment
from tests.harness import ADMIN, NEW_PARTNER, NOTIFY, OWNER, OWNER2, PROD, Harness

WATCHERS = "C0WATCHERS"
FULLWIDTH_PROD = "１１１１１１１１－２２２２－３３３３－４４４４－５５５５５５５５５５５５"


async def roles(h: Harness) -> list[tuple[str, str, str]]:
    async with h.bot.db.read() as session:
        rows = await session.execute(
            select(RoleAssignment.user_id, RoleAssignment.role, RoleAssignment.scope).order_by(
                RoleAssignment.user_id, RoleAssignment.scope
            )
        )
        return [tuple(row) for row in rows]


async def refused(h: Harness, text: str, user: str) -> str:
    """The command is answered (privately) with a refusal, and nothing is written."""
    before, held = await h.counts(), await roles(h)
    status, body = await h.command(text, user)
    assert status == 200
    assert body.get("response_type", "ephemeral") == "ephemeral"
    assert await h.counts() == before
    assert await roles(h) == held
    return body["text"]


async def test_the_last_owner_cannot_be_revoked_from_slack(harness_any_db: Harness) -> None:
    h = harness_any_db
    # OWNER2 owns every subscription; OWNER owns prod. OWNER2 takes OWNER's role: prod keeps OWNER2.
    _, body = await h.command(f"role revoke <@{OWNER}> owner prod", OWNER2)
    assert f"<@{OWNER}> is no longer owner of `prod`" in body["text"]

    # Now OWNER2 is prod's last owner: giving up the role on every subscription is refused.
    text = await refused(h, f"role revoke <@{OWNER2}> owner all", OWNER2)
    assert f"<@{OWNER2}> is the last owner of Production EU (`{PROD}`)" in text
    assert "Grant another owner first: `/dpor role grant @someone owner prod`" in text
    # The way out it names: another owner of prod first; then the revocation goes through.
    await h.command(f"role grant <@{OWNER}> owner prod", OWNER2)
    _, body = await h.command(f"role revoke <@{OWNER2}> owner all", OWNER2)
    assert f"<@{OWNER2}> is no longer owner of every subscription" in body["text"]
    assert (await roles(h))[-1] == (OWNER, "owner", PROD)


@pytest.mark.parametrize("bot_env", [{"DPOR_REQUIRED_APPROVALS": "3"}])
async def test_a_request_too_few_owners_can_approve_is_refused(harness: Harness) -> None:
    text = await refused(harness, f"set prod {NEW_PARTNER} new MSP", ADMIN)
    assert "Only 2 people can approve requests for Production EU" in text
    assert "each request needs 3 approvals (DPOR_REQUIRED_APPROVALS)" in text
    assert "`/dpor role grant @someone owner prod`" in text and "lowers DPOR_REQUIRED_APPROVALS" in text

    # One more owner, and the same request opens.
    await harness.command("role grant <@U0THIRD> owner prod", OWNER2)
    _, body = await harness.command(f"set prod {NEW_PARTNER} new MSP", ADMIN)
    assert "Request #1 is open" in body["text"]


async def test_ids_in_other_digits_are_folded_or_refused(harness: Harness) -> None:
    text = await refused(harness, "set prod ٤٩٧٧٩٨٥ new MSP", ADMIN)
    assert "is not a partner ID" in text and "other than ASCII" in text
    text = await refused(harness, "show ١١١١١١١١-2222-3333-4444-555555555555", ADMIN)
    assert "is not a subscription ID" in text and "other than ASCII" in text

    _, body = await harness.command(f"set {FULLWIDTH_PROD} ４９７７９８５ new MSP", ADMIN)
    assert "Request #1 is open: set partner `4977985`" in body["text"]
    async with harness.bot.db.read() as session:
        req = await session.get(ChangeRequest, 1)
        assert req is not None and (req.subscription_id, req.partner_id) == (PROD, NEW_PARTNER)
        assert all(p.isascii() for p in await session.scalars(select(Partner.partner_id)))


async def test_role_changes_are_announced_where_the_subscription_is_watched(harness: Harness) -> None:
    await harness.command("subscribe prod", OWNER, channel_id=WATCHERS)
    _, body = await harness.command("role grant <@U0NEWBIE|newbie> admin prod", OWNER)
    assert "is now admin" in body["text"]
    _, body = await harness.command("role revoke <@U0NEWBIE> admin prod", OWNER)
    await harness.settle()
    for channel in (NOTIFY, WATCHERS):
        texts = [m.text for m in harness.slack.messages(channel)]
        prod = f"*Production EU* (prod) `{PROD}`"
        assert texts == [
            f":key: <@U0NEWBIE> is now *admin* of {prod}, granted by <@{OWNER}>.",
            f":key: <@U0NEWBIE> is no longer *admin* of {prod}, revoked by <@{OWNER}>.",
        ]
    # A change on every subscription reaches DPOR_NOTIFY_CHANNELS, not a channel watching one subscription.
    await harness.command("role grant <@U0NEWBIE> admin all", OWNER2)
    await harness.settle()
    assert harness.slack.messages(NOTIFY)[-1].text == (
        f":key: <@U0NEWBIE> is now *admin* of *every subscription*, granted by <@{OWNER2}>."
    )
    assert len(harness.slack.messages(WATCHERS)) == 2


async def test_an_owner_revoked_while_their_role_grant_waits_to_write_is_refused(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner's `/dpor role grant` passes its first check (a read: still an owner); then the CLI (another
    process) revokes that owner in a transaction the grant's write must wait for. Once the revocation
    commits, the grant's own transaction checks again and refuses: nothing granted, nothing audited, the
    person told why. (Before, the grant went through: a revoked owner could make themselves one again.)"""
    h = harness_any_db
    passed, revoking = asyncio.Event(), asyncio.Event()
    require = policy.require

    async def checked_then_held(*args: Any, **kw: Any) -> str:
        scope = await require(*args, **kw)
        passed.set()
        await revoking.wait()  # the CLI's transaction is open before this request goes on to write
        return scope

    monkeypatch.setattr(policy, "require", checked_then_held)
    before = await h.audit_actions()
    cli = Database(h.bot.db.url, audit_key=h.bot.db.audit_key)
    try:
        grant = asyncio.create_task(h.command("role grant <@U0NEWBIE|newbie> owner prod", OWNER))
        await asyncio.wait_for(passed.wait(), 10)
        async with cli.write() as session:  # `dpor-bot roles revoke U0OWNER owner --subscription prod`
            assert await store.delete_role(session, OWNER, "owner", PROD)
            revoking.set()
            await asyncio.sleep(0.3)  # the grant now waits for this transaction's lock
            assert not grant.done()
        status, body = await asyncio.wait_for(grant, 30)
    finally:
        await cli.dispose()
    assert status == 200 and "Only an owner" in body["text"], body
    async with h.bot.db.read() as session:
        holders = set((await session.scalars(select(RoleAssignment.user_id))).all())
    assert "U0NEWBIE" not in holders and OWNER not in holders
    assert await h.audit_actions() == before
