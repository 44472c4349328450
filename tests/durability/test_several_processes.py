"""Two `dpor-bot serve` processes on one PostgreSQL database: clicks spread across them decide once, each
outbox row is delivered by one of them, and expiry and reminders happen once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from bot import directory
from tests.durability.conftest import Stack
from tests.harness import ADMIN, APPROVALS, NEW_PARTNER, NOTIFY, PROD
from tests.processes import cli

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

OWNERS = tuple(f"U0OWNER{i:02d}" for i in range(20))
NEWCOMER = "U0NEWCOMER"
SLACK_WRITES = ("chat.postMessage", "chat.update", "chat.postEphemeral")


def deliveries(stack: Stack) -> int:
    """Successful Slack calls that each deliver one outbox row."""
    return sum(c.ok and c.method in SLACK_WRITES for c in stack.slack.calls)


async def rows_delivered(stack: Stack) -> int:
    """Rows whose delivery made a Slack call: done, not covered by a later render of the same card."""
    return sum(
        r.kind != "apply" and r.status == "done" and not (r.last_error or "").startswith("covered by")
        for r in await stack.outbox()
    )


async def test_twenty_concurrent_clicks_across_two_processes_decide_once(stack: Stack) -> None:
    for owner in OWNERS:
        await directory.grant_role(stack.db, owner, "owner", PROD, actor="test")
    env = {"DPOR_OUTBOX_CONCURRENCY": "20"}
    first, second = await asyncio.gather(stack.start(**env), stack.start(**env))
    status, body = await stack.command(first, f"set prod {NEW_PARTNER}", ADMIN)
    assert status == 200 and "Request #1" in body["text"], body

    async def card_posted() -> bool:
        return (await stack.request(1)).card_ts is not None

    await stack.until("the card posted", card_posted)
    answers = await asyncio.gather(
        *(stack.click(first if i % 2 else second, "dpor_approve", 1, owner) for i, owner in enumerate(OWNERS))
    )
    assert [status for status, _ in answers] == [200] * 20

    async def applied() -> bool:
        return (await stack.request(1)).status == "applied" and await stack.undelivered() == 0

    await stack.until("applied", applied)
    actions = await stack.audit_actions()
    assert actions["request.approved"] == 1, actions  # one decision
    assert actions["apply.started"] == 1 and actions["apply.succeeded"] == 1, actions  # one apply
    assert actions["approval.denied"] == 19, actions
    await stack.verify_audit()

    req = await stack.request(1)
    refused = [e for e in stack.slack.ephemerals() if e.user != req.decided_by]
    assert sorted(e.user for e in refused) == sorted(set(OWNERS) - {req.decided_by})
    assert all("already approved" in e.text for e in refused), [e.text for e in refused]
    # One card, updated by one decision: the rows of create, approve, start and finish of the apply.
    assert len(stack.card_messages()) == 1 and await stack.card_shows(1, "Applied")
    assert [r.kind for r in await stack.outbox()].count("card") == 4
    dms = stack.texts(stack.slack.dm_channel(ADMIN))
    assert sum("was approved" in t for t in dms) == 1 and sum("was applied" in t for t in dms) == 1, dms
    assert len(stack.texts(NOTIFY)) == 1
    # Each row delivered by exactly one of the two processes: one Slack call per delivered row.
    assert deliveries(stack) == await rows_delivered(stack)
    assert all("Traceback" not in bot.log() for bot in stack.bots)


async def test_expiry_and_reminder_happen_once_across_two_processes(stack: Stack) -> None:
    env = {"DPOR_REQUEST_TTL": "1.5", "DPOR_REMIND_AFTER": "0.2", "DPOR_SWEEP_INTERVAL": "0.05"}
    first, _ = await asyncio.gather(stack.start(**env), stack.start(**env))
    status, _ = await stack.command(first, f"set prod {NEW_PARTNER}", ADMIN)
    assert status == 200

    async def expired() -> bool:
        return (await stack.request(1)).status == "expired" and await stack.undelivered() == 0

    await stack.until("expired", expired)
    actions = await stack.audit_actions()
    assert actions["request.expired"] == 1, actions
    assert await stack.card_shows(1, "Expired")
    card_ts = (await stack.request(1)).card_ts
    replies = [m.text for m in stack.slack.messages(APPROVALS) if m.thread_ts == card_ts]
    reminders = [text for text in replies if "still waiting for approval" in text]
    assert len(reminders) == 1, replies
    assert len([text for text in replies if "expired without a decision" in text]) == 1, replies
    dms = stack.texts(stack.slack.dm_channel(ADMIN))
    assert len(dms) == 1 and "expired without a decision" in dms[0], dms
    assert deliveries(stack) == await rows_delivered(stack)


async def test_a_row_committed_by_another_process_is_delivered_at_once(stack: Stack) -> None:
    """The CLI commits a role change whose notice goes to DPOR_NOTIFY_CHANNELS; `serve` polls only every
    60 s, yet posts the notice within a second: the commit's NOTIFY woke its worker."""
    slow = {"DPOR_OUTBOX_POLL_INTERVAL": "60", "DPOR_SWEEP_INTERVAL": "60"}
    bot = await stack.start(**slow)
    await asyncio.sleep(1.0)  # its first claim and the listener's first wake are behind it: it waits now
    code, _, err = await cli(
        stack.env, stack.cwd, "roles", "grant", NEWCOMER, "owner", "--subscription", "prod"
    )
    assert code == 0, err
    loop = asyncio.get_running_loop()
    committed = loop.time()

    async def announced() -> bool:
        return any(NEWCOMER in text for text in stack.texts(NOTIFY))

    await stack.until("the role change announced", announced, within=1.0)
    assert loop.time() - committed < 1.0
    await stack.settled(within=1.0)
    assert "Traceback" not in bot.log()


async def test_a_worker_whose_listening_connection_is_cut_listens_again(stack: Stack) -> None:
    """PostgreSQL ends the connection `serve` listens on; it reconnects, and the next commit wakes it."""
    slow = {"DPOR_OUTBOX_POLL_INTERVAL": "60", "DPOR_SWEEP_INTERVAL": "60"}
    bot = await stack.start(**slow)
    await asyncio.sleep(1.0)
    async with stack.db.write(serial=False) as session:
        cut = await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )
        assert cut.scalars().all() == [True]
    await bot.logged("reconnecting", within=5.0)
    await asyncio.sleep(2.0)  # reconnected (0.5 s), and its wake on reconnecting is behind it
    code, _, err = await cli(
        stack.env, stack.cwd, "roles", "grant", NEWCOMER, "owner", "--subscription", "prod"
    )
    assert code == 0, err

    async def announced() -> bool:
        return any(NEWCOMER in text for text in stack.texts(NOTIFY))

    await stack.until("the role change announced", announced, within=1.5)
    assert "Traceback" not in bot.log()
