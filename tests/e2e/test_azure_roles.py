"""DPOR_ROLE_SOURCE=azure over signed HTTP: owners and admins from the people's live Azure role assignments.

ARM is replayed through azure-core's transport hook (tests/bot/providers/arm_replay.py: the REST spec's
list shapes with nextLink paging and assignedTo() including groups). The seed's local role table is still
there and ignored: only Azure says who is who.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import func, select

from bot import people
from bot.app import Bot, web_app
from bot.providers.arm import Arm
from sandbox.standin import SlackStandin
from storage.models import AuditEvent, ChangeRequest
from tests.bot.providers.arm_replay import (
    CONTRIBUTOR,
    MANAGEMENT_GROUP,
    READER,
    FakeArm,
    FakeCredential,
)
from tests.bot.providers.arm_replay import (
    OWNER as OWNER_ROLE,
)
from tests.harness import (
    ADMIN,
    BYSTANDER,
    DEV_OWNER,
    NEW_PARTNER,
    OWNER,
    OWNER2,
    PROD,
    SECRET,
    TOKEN,
    Harness,
    make_settings,
    seed,
)
from tests.slack import SignedSlackClient

SUB = f"/subscriptions/{PROD}"
# Object IDs: OWNER holds Owner on the subscription (among other rows, so the list pages); OWNER2 is in a
# group that holds Owner on the management group above it; ADMIN and DEV_OWNER hold Contributor.
OBJECTS = {
    OWNER: "0a000000-0000-4000-8000-000000000001",
    OWNER2: "0a000000-0000-4000-8000-000000000002",
    ADMIN: "0a000000-0000-4000-8000-000000000003",
    DEV_OWNER: "0a000000-0000-4000-8000-000000000004",
}
GROUP = "0a000000-0000-4000-8000-0000000000aa"


def azure() -> FakeArm:
    fake = FakeArm()
    fake.add("/", OBJECTS[OWNER], READER)
    fake.add(f"{SUB}/resourceGroups/rg-web", OBJECTS[OWNER], CONTRIBUTOR)  # below the subscription
    owner_row = fake.add(SUB, OBJECTS[OWNER], OWNER_ROLE)
    fake.add(SUB, OBJECTS[OWNER], CONTRIBUTOR)
    fake.add(MANAGEMENT_GROUP, GROUP, OWNER_ROLE, principal_type="Group")
    fake.groups[OBJECTS[OWNER2]] = [GROUP]
    fake.add(SUB, OBJECTS[ADMIN], CONTRIBUTOR)
    fake.add(SUB, OBJECTS[DEV_OWNER], CONTRIBUTOR)
    fake.owner_row = owner_row  # type: ignore[attr-defined]
    return fake


@asynccontextmanager
async def azure_harness(database_url: str, fake: FakeArm, **env: Any) -> AsyncIterator[Harness]:
    """The real bot with DPOR_ROLE_SOURCE=azure, its ARM client on the replay (Bot's `arm` hook)."""
    async with SlackStandin(bot_token=TOKEN) as slack, SignedSlackClient(SECRET) as client:
        settings = make_settings(slack, database_url, DPOR_ROLE_SOURCE="azure", **env)
        arm = Arm(settings, transport=fake, credential=FakeCredential())
        bot = Bot(settings, worker_poll_interval=0.05, arm=arm)
        server = TestServer(web_app(bot), host="127.0.0.1")
        await server.start_server()
        try:
            await seed(bot.db)
            links = [people.Link(user, oid) for user, oid in OBJECTS.items()]
            await people.link(bot.db, links, actor="test")
            yield Harness(bot, slack, client, str(server.make_url("/slack/events")))
        finally:
            await server.close()


async def open_request(h: Harness, user: str = ADMIN) -> int:
    status, body = await h.command(f"set prod {NEW_PARTNER} new MSP", user)
    assert status == 200 and "Request #" in body["text"], body
    rid = int(body["text"].split("Request #")[1].split()[0])
    await h.card(rid)
    return rid


async def last_answer(h: Harness, user: str) -> str:
    await h.settle()
    answers = h.slack.ephemerals(user)
    assert answers, f"no private answer for {user}"
    return answers[-1].text


async def counts(h: Harness) -> tuple[int, int]:
    async with h.bot.db.read() as session:
        requests = await session.scalar(select(func.count()).select_from(ChangeRequest))
        events = await session.scalar(select(func.count()).select_from(AuditEvent))
    return int(requests or 0), int(events or 0)


async def test_an_azure_owner_approves_a_contributors_request(database_url: str) -> None:
    fake = azure()
    async with azure_harness(database_url, fake) as h:
        rid = await open_request(h, ADMIN)  # Contributor: may request
        status, _ = await h.click("dpor_approve", rid, OWNER)
        assert status == 200
        await h.settle()
        assert (await h.request(rid)).status in ("approved", "applying", "applied")
        assert (await h.request(rid)).decided_by == OWNER
        # The rows were read through assignedTo() for the person, page after page.
        lists = [s for s in fake.seen if s.method == "GET"]
        assert any(s.query.get("$filter") == [f"assignedTo('{OBJECTS[OWNER]}')"] for s in lists)
        assert any("$skiptoken" in s.query for s in lists)


async def test_a_contributor_may_not_approve(database_url: str) -> None:
    async with azure_harness(database_url, azure()) as h:
        rid = await open_request(h, ADMIN)
        status, _ = await h.click("dpor_approve", rid, DEV_OWNER)  # a local owner of dev, Contributor here
        assert status == 200
        assert "Only an owner" in await last_answer(h, DEV_OWNER)
        assert (await h.request(rid)).status == "pending"


async def test_an_owner_through_a_group_on_a_management_group_approves(sqlite_url: str) -> None:
    async with azure_harness(sqlite_url, azure()) as h:
        rid = await open_request(h, ADMIN)
        await h.click("dpor_approve", rid, OWNER2)
        await h.settle()
        assert (await h.request(rid)).decided_by == OWNER2


async def test_a_revoked_owner_is_refused_after_the_cache_window(sqlite_url: str) -> None:
    fake = azure()
    async with azure_harness(sqlite_url, fake, DPOR_AZURE_ROLE_CACHE="1") as h:
        rid = await open_request(h, ADMIN)  # reads every linked person's roles: OWNER is an owner now
        fake.rows.pop(fake.owner_row.lower())  # type: ignore[attr-defined]  revoked in Azure
        await asyncio.sleep(1.2)
        await h.click("dpor_approve", rid, OWNER)
        assert "Only an owner" in await last_answer(h, OWNER)
        assert (await h.request(rid)).status == "pending"


async def test_within_the_cache_window_arm_is_not_asked_again(sqlite_url: str) -> None:
    fake = azure()
    async with azure_harness(sqlite_url, fake) as h:
        await h.command("show prod", ADMIN)
        status, body = await h.command("role list prod", ADMIN)
        assert status == 200 and f"<@{OWNER}>" in body["text"] and f"<@{OWNER2}>" in body["text"]
        asked = len(fake.seen)
        status, body = await h.command("role list prod", OWNER)
        assert f"<@{ADMIN}>" in body["text"]
        assert len(fake.seen) == asked


async def test_an_unlinked_person_is_told_how_to_get_linked(sqlite_url: str) -> None:
    async with azure_harness(sqlite_url, azure()) as h:
        before = await counts(h)
        status, body = await h.command(f"set prod {NEW_PARTNER} please", BYSTANDER)
        assert status == 200
        assert f"dpor-bot people link {BYSTANDER} YOUR_OBJECT_ID_OR_UPN" in body["text"]
        assert await counts(h) == before
        rid = await open_request(h, ADMIN)
        await h.click("dpor_approve", rid, BYSTANDER)
        assert f"dpor-bot people link {BYSTANDER}" in await last_answer(h, BYSTANDER)
        assert (await h.request(rid)).status == "pending"


async def test_a_slow_arm_does_not_hold_slacks_answer(database_url: str) -> None:
    fake = azure()
    fake.page_size = 100  # one page per person: each read takes the 5 s once
    async with azure_harness(database_url, fake) as h:
        fake.delay = 5.0
        before = await counts(h)
        started = time.monotonic()
        status, body = await h.command(f"set prod {NEW_PARTNER} new MSP", ADMIN)
        took = time.monotonic() - started
        assert status == 200 and took < 2.8, took
        assert "Azure has not answered yet" in body["text"] and "Try again in a few seconds" in body["text"]
        assert await counts(h) == before  # nothing written
        # The fetch carried on in the background and filled the cache: the next try is quick.
        await asyncio.sleep(5.5)
        started = time.monotonic()
        rid = await open_request(h, ADMIN)
        assert time.monotonic() - started < 2.8
        # A click whose clicker's roles are cached answers at once; with the cache cold, within the limit.
        await h.card(rid)
        h.bot.policy.roles._cache.clear()  # type: ignore[attr-defined]  as if the window had passed
        started = time.monotonic()
        status, _ = await h.click("dpor_approve", rid, OWNER)
        took = time.monotonic() - started
        assert status == 200 and took < 2.8, took
        assert "Azure has not answered yet" in await last_answer(h, OWNER)
        assert (await h.request(rid)).status == "pending"
        assert "approval.denied" not in await h.audit_actions()


async def test_a_click_reads_the_earlier_approvers_roles_before_its_transaction(database_url: str) -> None:
    """2 of 2: the second click counts the first approval only if its approver is an owner now. Azure is
    asked about that approver before the click's transaction, as about the clicker: a slow ARM is answered
    "try again" with nothing written, not after holding the database for DPOR_AZURE_ROLE_WAIT and then
    recording a refusal (approval.denied) for a click that was never decided."""
    fake = azure()
    fake.page_size = 100  # one page per person: each read takes the delay once
    async with azure_harness(database_url, fake, DPOR_REQUIRED_APPROVALS="2") as h:
        rid = await open_request(h, ADMIN)
        await h.click("dpor_approve", rid, OWNER)
        await h.settle()
        assert (await h.request(rid)).status == "pending"
        cache = h.bot.policy.roles._cache  # type: ignore[attr-defined]
        for key in [key for key in cache if key[0] == OBJECTS[OWNER]]:
            del cache[key]  # the first approver's window has passed; the clicker's and requester's not
        fake.delay = 5.0
        before = await counts(h)
        status, _ = await h.click("dpor_approve", rid, OWNER2)
        assert status == 200
        assert "Azure has not answered yet" in await last_answer(h, OWNER2)
        assert (await h.request(rid)).status == "pending"
        assert await counts(h) == before  # nothing written: no approval.denied either
        # The read carried on and filled the cache: the same click now decides, with both approvals.
        await asyncio.sleep(5.5)
        fake.delay = 0.0
        await h.click("dpor_approve", rid, OWNER2)
        await h.settle()
        assert (await h.request(rid)).status == "applied"


async def test_roles_are_not_granted_from_slack(sqlite_url: str) -> None:
    async with azure_harness(sqlite_url, azure()) as h:
        before = await counts(h)
        status, body = await h.command(f"role grant <@{BYSTANDER}> owner prod", OWNER)
        assert status == 200 and "Roles come from Azure RBAC" in body["text"]
        assert await counts(h) == before
        status, body = await h.command("role list", OWNER)
        assert "Roles come from Azure RBAC" in body["text"] and "/dpor role list SUB" in body["text"]


@pytest.mark.parametrize("user", [OWNER])
async def test_home_lists_the_azure_roles(sqlite_url: str, user: str) -> None:
    async with azure_harness(sqlite_url, azure()) as h:
        rid = await open_request(h, ADMIN)
        status, _ = await h.home_opened(user)
        assert status == 200
        await h.settle()
        home = h.home(user)
        assert home is not None
        shown = str(home)
        assert "Production EU" in shown and f"#{rid}" in shown


async def test_the_form_offers_the_subscriptions_azure_lets_them_request(sqlite_url: str) -> None:
    """DEV_OWNER owns dev in the bot's own table, but Azure makes them Contributor of prod only."""
    async with azure_harness(sqlite_url, azure()) as h:
        for user, offered in ((DEV_OWNER, [PROD]), (BYSTANDER, [])):
            status, _ = await h.shortcut("dpor_set", user)
            assert status == 200
            status, answer = await h.suggest(user, "subscription", "")
            assert status == 200
            assert [option["value"] for option in answer["options"]] == offered
