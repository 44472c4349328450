"""Channel watches: who may start and stop a channel's notifications, per subscription, and the audit."""

from __future__ import annotations

import asyncio

import pytest

from bot import audit, directory, watches
from bot.directory import SubscriptionRow
from bot.errors import NotAuthorised
from storage.db import Database
from storage.directory import watching_channels
from storage.models import AuditEvent

A = "11111111-2222-3333-4444-555555555555"
B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OWNER_A, ADMIN_B, GLOBAL = "UOWNERA", "UADMINB", "UGLOBAL"


async def seed(db: Database) -> None:
    await directory.upsert_subscriptions(
        db, [SubscriptionRow(A, "Production", "prod"), SubscriptionRow(B, "Staging", "stage")], actor="test"
    )
    await directory.grant_role(db, OWNER_A, "owner", "prod", actor="test")
    await directory.grant_role(db, ADMIN_B, "admin", "stage", actor="test")
    await directory.grant_role(db, GLOBAL, "owner", None, actor="test")


async def channels(db: Database, subscription_id: str) -> list[str]:
    async with db.read() as session:
        return await watching_channels(session, subscription_id)


async def actions(db: Database) -> list[tuple[str, str, dict]]:
    async with db.read() as session:
        from sqlalchemy import select

        rows = await session.scalars(select(AuditEvent).order_by(AuditEvent.seq))
        return [(e.action, e.actor, e.data) for e in rows if e.action.startswith("channel.")]


async def test_watches_are_added_once_and_audited(db: Database) -> None:
    await seed(db)
    assert await watches.watch(db, team_id="T", channel_id="C1", subscription="prod", user_id=OWNER_A)
    assert not await watches.watch(db, team_id="T", channel_id="C1", subscription=A, user_id=OWNER_A)
    assert await watches.watch(db, team_id="T", channel_id="C2", subscription="all", user_id=GLOBAL)
    assert await channels(db, A) == ["C1", "C2"] and await channels(db, B) == ["C2"]
    assert await actions(db) == [
        ("channel.subscribed", OWNER_A, {"channel_id": "C1", "scope": A}),
        ("channel.subscribed", GLOBAL, {"channel_id": "C2", "scope": "*"}),
    ]
    assert (await audit.verify(db)).ok


async def test_a_watch_needs_a_role_on_what_it_reports(db: Database) -> None:
    await seed(db)
    with pytest.raises(NotAuthorised):
        await watches.watch(db, team_id="T", channel_id="C1", subscription="prod", user_id=ADMIN_B)
    with pytest.raises(NotAuthorised):
        await watches.watch(db, team_id="T", channel_id="C1", subscription="all", user_id=OWNER_A)
    assert await channels(db, A) == [] and await actions(db) == []


async def test_an_admin_of_one_subscription_stops_only_its_own_watches(db: Database) -> None:
    """Issue 16 item 5: `unsubscribe` by an admin of one subscription removed every watch of the channel."""
    await seed(db)
    for sub, user in (("prod", OWNER_A), ("stage", ADMIN_B), ("all", GLOBAL)):
        await watches.watch(db, team_id="T", channel_id="C1", subscription=sub, user_id=user)
    done = await watches.unwatch(db, channel_id="C1", subscription=None, user_id=ADMIN_B)
    assert (done.removed, done.kept) == ([B], [A, "*"])
    assert await channels(db, A) == ["C1"]
    with pytest.raises(NotAuthorised):
        await watches.unwatch(db, channel_id="C1", subscription="prod", user_id=ADMIN_B)
    assert await channels(db, A) == ["C1"]
    done = await watches.unwatch(db, channel_id="C1", subscription=None, user_id=GLOBAL)
    assert (done.removed, done.kept) == ([A, "*"], [])
    assert [a for a, _, _ in await actions(db)].count("channel.unsubscribed") == 3


async def test_concurrent_subscribes_for_one_channel_both_succeed(db: Database) -> None:
    """Issue 16 item 8: two at once answered "Something went wrong" on PostgreSQL (unique violation)."""
    await seed(db)
    results = await asyncio.gather(
        *(
            watches.watch(db, team_id="T", channel_id="C1", subscription="prod", user_id=OWNER_A)
            for _ in range(8)
        )
    )
    assert sorted(results) == [False] * 7 + [True]
    assert await channels(db, A) == ["C1"]
    assert len(await actions(db)) == 1
