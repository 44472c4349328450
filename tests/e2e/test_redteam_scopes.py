"""Red-team findings on scopes and watches (issue 16: items 2, 5, 8), over signed HTTP on both engines."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from bot import directory
from bot.directory import SubscriptionRow
from bot.errors import BadInput
from storage.models import ChannelWatch, RoleAssignment
from tests.harness import ADMIN, DEV_OWNER, NOTIFY, OWNER, OWNER2, PROD, Harness

NEWCOMER = "U0NEWCOMER"


async def rows(h: Harness, model: type) -> int:
    async with h.bot.db.read() as session:
        return await session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("alias", ["*", "all", "ALL", "ａｌｌ", "pro\u200bd", PROD.upper()])
async def test_an_alias_cannot_pass_for_a_scope_word_or_another_subscription(
    harness_any_db: Harness, alias: str
) -> None:
    """Item 2: the owner of a subscription aliased `*` could mint a global owner."""
    with pytest.raises(BadInput):
        await directory.upsert_subscriptions(
            harness_any_db.bot.db,
            [SubscriptionRow("99999999-9999-4999-8999-999999999999", "Scratch", alias)],
            actor="test",
        )


@pytest.mark.parametrize("scope", ["*", "all"])
async def test_a_subscription_owner_cannot_grant_on_every_subscription(
    harness_any_db: Harness, scope: str
) -> None:
    """Item 2: `*` and `all` always mean every subscription, which only a global owner manages."""
    h = harness_any_db
    before = await rows(h, RoleAssignment)
    status, body = await h.command(f"role grant <@{NEWCOMER}> owner {scope}", OWNER)
    assert status == 200 and "Only an owner of every subscription" in body["text"], body
    assert await rows(h, RoleAssignment) == before
    status, body = await h.command(f"role grant <@{NEWCOMER}> owner {scope}", OWNER2)
    assert "is now owner of every subscription" in body["text"], body


async def test_an_admin_of_one_subscription_cannot_silence_the_others(harness_any_db: Harness) -> None:
    """Item 5: `/dpor unsubscribe` by an admin of prod removed the channel's watches of every subscription;
    now each watch needs a role on what it reports, and both acts are audited."""
    h = harness_any_db
    for target, owner in (("prod", OWNER), ("dev", DEV_OWNER)):
        status, body = await h.command(f"subscribe {target}", owner, channel_id=NOTIFY)
        assert status == 200 and "will now get" in body["text"], body
    status, body = await h.command("unsubscribe", ADMIN, channel_id=NOTIFY)
    assert status == 200
    assert "no longer gets DPOR change notifications for `" in body["text"], body
    assert "still gets them for" in body["text"], body
    async with h.bot.db.read() as session:
        left = (await session.scalars(select(ChannelWatch.scope))).all()
    assert left == ["66666666-7777-8888-9999-000000000000"]  # dev's watch stays
    _, body = await h.command("unsubscribe dev", ADMIN, channel_id=NOTIFY)
    assert "Only an owner or admin" in body["text"], body
    actions = await h.audit_actions()
    assert actions.count("channel.subscribed") == 2 and actions.count("channel.unsubscribed") == 1


async def test_two_subscribes_at_once_both_answer(harness_any_db: Harness) -> None:
    """Item 8: two `/dpor subscribe` for one channel at once answered "Something went wrong" on PostgreSQL."""
    h = harness_any_db
    answers = await asyncio.gather(*(h.command("subscribe prod", OWNER, channel_id=NOTIFY) for _ in range(6)))
    texts = [body["text"] for status, body in answers if status == 200]
    assert len(texts) == 6 and not any("went wrong" in t for t in texts), texts
    assert sum("will now get" in t for t in texts) == 1
    assert await rows(h, ChannelWatch) == 1
