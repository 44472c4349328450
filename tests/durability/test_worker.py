"""The outbox worker in one process (the real app over HTTP, a Slack stand-in): 429s and Retry-After,
dead rows, the order of a card's rows, shutdown that releases what it holds, expiry and reminders."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot import apply as apply_module
from bot import audit, clicks, lifecycle
from bot import outbox as outbox_rows
from bot.app import outbox_worker
from bot.errors import Refusal
from bot.worker import DEAD_RECORDER_TRIES, OutboxWorker
from storage import directory
from storage import outbox as outbox_table
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, Partner, utcnow
from tests.bot import world as lc
from tests.harness import ADMIN, APPROVALS, DEV_OWNER, NEW_PARTNER, NOTIFY, OWNER, OWNER2, Harness


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not {what} after {within}s")


async def rows(h: Harness) -> list[OutboxMessage]:
    async with h.bot.db.read() as session:
        return list((await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def all_done(h: Harness) -> bool:
    return all(r.status == "done" for r in await rows(h))


async def card_posted(h: Harness, request_id: int) -> bool:
    async with h.bot.db.read() as session:
        req = await session.get(ChangeRequest, request_id)
    return req is not None and req.card_ts is not None


async def new_request(h: Harness, text: str, user_id: str) -> int:
    status, body = await h.command(text, user_id)
    assert status == 200 and "Request #" in body["text"], body
    return int(body["text"].split("Request #")[1].split()[0].rstrip(".:,"))


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])  # the card's rows only
async def test_a_429_holds_the_whole_channel_until_retry_after(harness_any_db: Harness) -> None:
    """Slack answers 429 to the first card's post: no call reaches that channel until Retry-After has
    passed, not even another request's card that is due in the meantime; both are then posted once."""
    h = harness_any_db
    h.slack.fail("chat.postMessage", status=429, retry_after=1, times=1)
    first = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)

    async def limited() -> bool:
        return any(c.status == 429 for c in h.slack.calls_to("chat.postMessage"))

    await until("answered 429", limited)
    second = await new_request(h, f"set dev {NEW_PARTNER}", OWNER2)
    await until("both cards posted", lambda: _both(h, first, second))

    (rate_limited,) = [c for c in h.slack.calls if c.status == 429]
    later = [c for c in h.slack.calls if c.params.get("channel") == APPROVALS and c.at > rate_limited.at]
    assert len(later) == 2 and all(c.ok for c in later), [c.summary() for c in h.slack.calls]
    assert min(c.at for c in later) >= rate_limited.at + 1.0, [c.summary() for c in h.slack.calls]
    assert len(h.slack.messages(APPROVALS)) == 2
    (row,) = [r for r in await rows(h) if r.payload == {"request_id": first}]
    assert row.attempts == 1, "a 429 is not counted as a failed attempt"


async def _both(h: Harness, first: int, second: int) -> bool:
    return await card_posted(h, first) and await card_posted(h, second)


@pytest.mark.parametrize("bot_env", [{"DPOR_OUTBOX_MAX_ATTEMPTS": "1", "DPOR_DM_APPROVERS_MAX": "0"}])
async def test_a_429_storm_delivers_every_message_once(harness: Harness) -> None:
    """Every Web API method the worker uses answers 429, again and again: every card, DM, notification and
    ephemeral still arrives, none twice, and no row dies of it although one failed attempt is the bound.
    (On SQLite only: what differs on PostgreSQL, the hold's UPDATE, is covered by the test above.)"""
    h = harness
    for method, times in (
        ("chat.postMessage", 2),
        ("chat.update", 1),
        ("conversations.open", 1),
        ("chat.postEphemeral", 1),
    ):
        h.slack.fail(method, status=429, retry_after=1, times=times)
    prod = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    dev = await new_request(h, f"set dev {NEW_PARTNER}", OWNER2)
    await until("both cards posted", lambda: _both(h, prod, dev))
    assert (await h.click("dpor_approve", prod, OWNER))[0] == 200
    assert (await h.click("dpor_approve", dev, DEV_OWNER))[0] == 200
    assert (await h.click("dpor_approve", dev, OWNER))[0] == 200  # not an owner of dev: an ephemeral

    async def applied() -> bool:
        return (
            (await h.request(prod)).status == "applied"
            and (await h.request(dev)).status == "applied"
            and await all_done(h)
        )

    await until("both applied and every row delivered", applied, within=40)
    assert sum(c.status == 429 for c in h.slack.calls) == 5
    cards = [m for m in h.slack.messages(APPROVALS) if m.thread_ts is None]
    assert len(cards) == 2 and all("Applied" in json.dumps(c.blocks) for c in cards)
    steps = [m.text for m in h.slack.messages(APPROVALS) if m.thread_ts is not None]
    assert sorted("approval 1 of 1" in t for t in steps) == [False, False, True, True], steps
    for requester in (ADMIN, OWNER2):
        dms = [m.text for m in h.slack.messages(h.slack.dm_channel(requester))]
        assert sorted("was approved" in t for t in dms) == [False, True], dms
        assert sum("was applied" in t for t in dms) == 1, dms
    assert len(h.slack.messages(NOTIFY)) == 2
    assert len(h.slack.ephemerals(OWNER)) == 1
    # Every successful call is one row's delivery: nothing was sent twice.
    done = [r for r in await rows(h) if not (r.last_error or "").startswith("covered by")]
    ok = [
        c
        for c in h.slack.calls
        if c.ok and c.method in ("chat.postMessage", "chat.update", "chat.postEphemeral")
    ]
    assert len(ok) == len([r for r in done if r.kind != "apply"]), [c.summary() for c in ok]


@pytest.mark.parametrize("bot_env", [{"DPOR_OUTBOX_MAX_ATTEMPTS": "2"}])
async def test_dead_rows_keep_their_error_and_are_requeued(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A row that fails past the bound, or with an error no retry fixes, is dead with its last error and
    logged; requeued, it is delivered."""
    h = harness
    caplog.set_level(logging.ERROR, logger="dpor.worker")
    h.slack.fail("chat.postMessage", status=500, times=2)
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)

    async def dead() -> bool:
        return [r.status for r in await rows(h) if r.kind == "card"] == ["dead"]

    await until("the card row dead", dead)
    (row,) = [r for r in await rows(h) if r.kind == "card"]
    # The requester hears that nobody can approve a request whose card never appeared.
    await until("the requester told", lambda: _told_unposted(h))
    assert row.attempts == 2 and row.last_error == "Slack answered internal_error"
    assert f"outbox row {row.id} (card, card:{rid}) is dead after 2 attempts" in caplog.text
    assert [r.id for r in await outbox_rows.undelivered(h.bot.db, dead_only=True)] == [row.id]

    assert await outbox_rows.requeue(h.bot.db, [row.id]) == [row.id]
    await until("the card posted", lambda: card_posted(h, rid))
    assert len(h.slack.messages(APPROVALS)) == 1

    h.slack.fail("chat.update", status=200, error="message_not_found")
    assert (await h.click("dpor_reject", rid, OWNER))[0] == 200
    why = {"reason": {"reason": {"type": "plain_text_input", "value": "not now"}}}
    assert (await h.submit(OWNER, why))[0] == 200  # Reject asks why; the submission decides

    async def one_dead() -> bool:
        return [r.status for r in await rows(h) if r.kind == "card"].count("dead") == 1 and len(
            await outbox_rows.undelivered(h.bot.db)
        ) == 1

    await until("the card's update dead at once", one_dead)
    (update_row,) = await outbox_rows.undelivered(h.bot.db)
    assert update_row.attempts == 1 and update_row.last_error == "Slack answered message_not_found"
    assert await outbox_rows.requeue(h.bot.db) == [update_row.id]
    await until("every row delivered", lambda: all_done(h))
    assert "Rejected" in json.dumps((await h.card(rid)).blocks)


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])  # the card's rows only
async def test_requeue_refuses_rows_that_are_not_dead(harness: Harness) -> None:
    rid = await new_request(harness, f"set prod {NEW_PARTNER}", ADMIN)
    await until("the card posted", lambda: card_posted(harness, rid))
    await harness.settle()
    (row,) = await rows(harness)
    with pytest.raises(Refusal, match=f"outbox row {row.id} is done, not dead"):
        await outbox_rows.requeue(harness.bot.db, [row.id])
    with pytest.raises(Refusal, match="there is no outbox row 999"):
        await outbox_rows.requeue(harness.bot.db, [999])
    assert await outbox_rows.requeue(harness.bot.db) == []


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])  # the card's rows only
async def test_a_cards_rows_go_in_order_post_before_update(harness: Harness) -> None:
    """The card's post is held at Slack; the request is rejected meanwhile. The update waits for the post
    (it needs its ts), so the card is posted once and then shows the rejection."""
    h = harness
    h.slack.hold("chat.postMessage")
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    await h.slack.wait_held("chat.postMessage")
    status, _ = await h.command(f"cancel {rid}", ADMIN)
    assert status == 200
    await asyncio.sleep(0.3)  # time for a worker that ignored the order to send the update
    assert h.slack.calls_to("chat.update") == []
    h.slack.release("chat.postMessage")
    await until("every row delivered", lambda: all_done(h))
    card, step = h.slack.messages(APPROVALS)  # the card, and the cancellation in its thread
    assert "Cancelled" in json.dumps(card.blocks) and step.thread_ts == card.ts
    on_card = [
        c for c in h.slack.calls if c.params.get("channel") == APPROVALS and "thread_ts" not in c.params
    ]
    assert [c.method for c in on_card if c.ok] in (
        ["chat.postMessage", "chat.update"],
        ["chat.postMessage"],  # the post rendered the cancellation already and covered the update
    )


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])  # the card's rows only
async def test_stop_releases_the_rows_it_could_not_finish(harness_any_db: Harness) -> None:
    """A delivery still in flight when the grace period ends is cancelled and its row released at once
    (not left to its lease), with the attempt not counted; the next worker delivers it once."""
    h = harness_any_db
    bot = h.bot
    assert bot.worker is not None
    await bot.worker.stop()
    h.slack.hold("chat.postMessage")
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    first = outbox_worker(bot.ctx, bot.providers, bot.worker_client, poll_interval=0.05, shutdown_grace=0.2)
    first.start()
    await h.slack.wait_held("chat.postMessage")
    await first.stop()
    (row,) = await rows(h)
    assert (row.status, row.claimed_by, row.claimed_until, row.attempts) == ("pending", None, None, 0)
    h.slack.release("chat.postMessage", drop=True)

    second = outbox_worker(bot.ctx, bot.providers, bot.worker_client, poll_interval=0.05)
    second.start()
    try:
        await until("the card posted", lambda: card_posted(h, rid))
        await until("every row delivered", lambda: all_done(h))
    finally:
        await second.stop()
    assert len(h.slack.messages(APPROVALS)) == 1


async def test_a_row_abandoned_by_crashed_processes_goes_dead(harness: Harness) -> None:
    """A row whose every claim ended without an outcome (say, it kills the process) stops being tried."""
    h = harness
    bot = h.bot
    assert bot.worker is not None
    await bot.worker.stop()
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    async with bot.db.write(serial=False) as session:
        await session.execute(update(OutboxMessage).values(attempts=bot.worker.max_attempts))
    worker = outbox_worker(bot.ctx, bot.providers, bot.worker_client, poll_interval=0.05)
    worker.start()
    try:
        await until("the row dead", lambda: _statuses(h, ["dead"]))
    finally:
        await worker.stop()
    (row,) = [r for r in await rows(h) if r.kind == "card"]
    assert "ended without an outcome" in (row.last_error or "")
    assert not await card_posted(h, rid)


async def _statuses(h: Harness, expected: list[str]) -> bool:
    return [r.status for r in await rows(h) if r.kind == "card"] == expected


@pytest.mark.parametrize(
    "bot_env", [{"DPOR_REQUEST_TTL": "2", "DPOR_REMIND_AFTER": "0.3", "DPOR_SWEEP_INTERVAL": "0.1"}]
)
async def test_reminder_then_expiry(harness_any_db: Harness) -> None:
    """A pending request gets one reminder in its card's thread after DPOR_REMIND_AFTER, however often the
    sweep runs; past DPOR_REQUEST_TTL it expires: the card says so and the requester is told."""
    h = harness_any_db
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    card = await h.card(rid)

    def replies() -> list[str]:
        return [m.text for m in h.slack.messages(APPROVALS) if m.thread_ts == card.ts]

    async def reminded() -> bool:
        return bool(replies())

    await until("reminded", reminded)
    (reminder,) = replies()
    assert f"Request #{rid}" in reminder and "still waiting for approval" in reminder
    # It mentions the owners who can approve it and have not (both; the requester is an admin).
    assert f"Waiting on <@{OWNER}>, <@{OWNER2}>." in reminder

    async def expired() -> bool:
        return (await h.request(rid)).status == "expired" and await all_done(h)

    await until("expired", expired)
    assert "Expired" in json.dumps(h.slack.message(APPROVALS, card.ts).blocks)
    dms = [m.text for m in h.slack.messages(h.slack.dm_channel(ADMIN))]
    assert len(dms) == 1 and "expired without a decision" in dms[0], dms
    # The expiry is the thread's next and last step.
    assert replies()[0] == reminder and len(replies()) == 2, replies()
    assert "expired without a decision" in replies()[1]
    assert len([m for m in h.slack.messages(APPROVALS) if m.thread_ts is None]) == 1
    async with h.bot.db.read() as session:
        expiries = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "request.expired")
        )
    assert expiries == 1


async def test_remind_due_reminds_each_pending_request_once(db: Database) -> None:
    await lc.seed(db)
    waiting = await lc.open_request(db)
    later = utcnow() + timedelta(hours=2)
    assert await lifecycle.remind_due(db, timedelta(hours=3), now=later) == []
    assert await lifecycle.remind_due(db, timedelta(hours=1), now=later) == [waiting]
    assert await lifecycle.remind_due(db, timedelta(hours=1), now=later) == []
    async with db.read() as session:
        kinds = (await session.scalars(select(OutboxMessage.kind).order_by(OutboxMessage.id))).all()
        req = await session.get(ChangeRequest, waiting)
    assert kinds == ["card", "ask", "ask", "remind"]  # the DMs to the two owners, then the reminder
    assert req is not None and req.reminded_at is not None


async def test_remind_due_skips_decided_and_overdue_requests(db: Database) -> None:
    await lc.seed(db)
    overdue = await lc.open_request(db)
    too_late = utcnow() + lc.POLICY.request_ttl + timedelta(minutes=1)
    assert await lifecycle.remind_due(db, timedelta(hours=1), now=too_late) == []
    assert await lifecycle.expire_due(db, now=too_late) == [overdue]
    decided = await lc.open_request(db)
    await clicks.approve(db, lc.POLICY, request_id=decided, team_id=lc.TEAM, user_id=lc.OWNER)
    assert await lifecycle.remind_due(db, timedelta(hours=1), now=utcnow() + timedelta(hours=2)) == []


async def _told_unposted(h: Harness) -> bool:
    return any("has no approval card" in m.text for m in h.slack.messages(h.slack.dm_channel(ADMIN)))


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])  # the card's rows only
async def test_a_failing_sweep_does_not_hold_up_deliveries(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweep (expiry, reminders) raises: the rows due are still claimed in the same turn, not at the
    next poll (a minute away here), and the log says the sweep failed."""
    h = harness
    bot = h.bot
    await bot.worker.stop()
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    worker = outbox_worker(bot.ctx, bot.providers, bot.worker_client, poll_interval=60)

    async def broken_sweep() -> None:
        raise RuntimeError("sweep broke")

    worker.sweep = broken_sweep
    with caplog.at_level(logging.ERROR, logger="dpor"):
        worker.start()
        try:
            await until("the card posted", lambda: card_posted(h, rid), within=10)
        finally:
            await worker.stop()
    assert any("outbox sweep" in r.getMessage() for r in caplog.records)


async def test_outcomes_that_end_together_share_a_transaction_and_fail_alone(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten deliveries end at once: their outcomes (and what each records with it) are written in a few
    transactions, not ten; the one whose recorder fails rolls back alone, is logged and waits to be
    delivered again after a backoff with the reason kept, while the nine others are done with their
    records."""
    async with db.write() as session:
        rows_ = [{"kind": "notice", "key": f"k{n}", "payload": {"n": n}} for n in range(10)]
        await outbox_table.insert_rows(session, rows_)
    release, started = asyncio.Event(), []

    committed: list[int] = []

    async def deliver(row: OutboxMessage) -> Callable[[AsyncSession], Awaitable[Callable[[], None]]]:
        started.append(row.id)
        await release.wait()  # all ten end in the same turn of the event loop
        n = row.payload["n"]

        async def record(session: AsyncSession) -> Callable[[], None]:
            # First a row of its own (on SQLite straight on the connection: storage.direct), so the
            # SAVEPOINT must have begun before any statement went through the session.
            later = {"kind": "notice", "key": f"r{n}", "available_at": utcnow() + timedelta(days=1)}
            await outbox_table.insert_rows(session, [later])
            await directory.insert_partner(session, f"{n:07d}", f"Partner {n}")
            if n == 3:
                raise RuntimeError("recorder broke")
            return lambda: committed.append(n)  # what a recorder asks for once its outcome is committed

        return record

    writes = 0
    write = db.write

    def counted(*args: Any, **kw: Any) -> Any:
        nonlocal writes
        writes += 1
        return write(*args, **kw)

    db.write = counted  # type: ignore[method-assign]
    worker = OutboxWorker(db, {"notice": deliver}, poll_interval=60)
    with caplog.at_level(logging.ERROR, logger="dpor"):
        worker.start()
        try:
            await until("all ten claimed", lambda: _true(len(started) == 10))
            before = writes
            release.set()
            await until("nine done", lambda: _done(db, 9))
            assert writes - before <= 4, writes - before  # outcomes, plus the claims their ends woke
        finally:
            await worker.stop()
    async with db.read() as session:
        partners = set((await session.scalars(select(Partner.partner_id))).all())
        pending = select(OutboxMessage).where(OutboxMessage.status == "pending")
        waiting = (await session.scalars(pending)).all()
    failed = [r for r in waiting if r.key.startswith("k")]
    assert {f"{n:07d}" for n in range(10) if n != 3} <= partners and "0000003" not in partners
    assert sorted(r.key for r in waiting if r.key.startswith("r")) == [f"r{n}" for n in range(10) if n != 3]
    assert [r.payload["n"] for r in failed] == [3]
    assert failed[0].claimed_by is None and failed[0].available_at > utcnow()  # a backoff, not the lease
    assert "could not be recorded: RuntimeError: recorder broke" in (failed[0].last_error or "")
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)
    assert sorted(committed) == [n for n in range(10) if n != 3]  # never for the one rolled back


@pytest.mark.parametrize("bot_env", [{"DPOR_OUTBOX_LEASE": "60", "DPOR_DM_APPROVERS_MAX": "0"}])
async def test_an_applys_result_is_written_with_its_rows_outcome(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The apply's result (applied, its audit event, the rows it queues, the checkpoint) commits in the
    transaction that settles the apply row. When that transaction fails, nothing of the result is kept:
    the request is still applying and no checkpoint is logged; the row is delivered again after a backoff
    (not when its minute's lease lapses) with the reason kept, and the change is applied and recorded
    once."""
    h = harness_any_db
    rid = await new_request(h, f"set prod {NEW_PARTNER} atomic", ADMIN)
    await until("the card posted", lambda: card_posted(h, rid))
    settle, broken = outbox_table.settle, []

    async def settle_or_break(session: AsyncSession, row_id: int, *args: Any, **kw: Any) -> bool:
        row = await session.get(OutboxMessage, row_id)
        if row is not None and row.kind == "apply" and not broken:
            broken.append(row_id)
            raise RuntimeError("the outcome's transaction broke")
        return await settle(session, row_id, *args, **kw)

    monkeypatch.setattr(outbox_table, "settle", settle_or_break)

    async def logged(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    async def events(action: str) -> int:
        async with h.bot.db.read() as session:
            query = select(func.count()).select_from(AuditEvent).where(AuditEvent.action == action)
            return int(await session.scalar(query) or 0)

    with caplog.at_level(logging.INFO, logger="dpor"):
        assert (await h.click("dpor_approve", rid, OWNER))[0] == 200
        await until("the outcome refused", lambda: logged("could not be recorded"))
        assert (await h.request(rid)).status == "applying"
        assert await events("apply.succeeded") == 0
        assert not await logged("audit checkpoint")
        await until("applied on the next attempt", lambda: _status(h, rid, "applied"))
        await until("the checkpoint logged", lambda: logged("audit checkpoint"))
    assert await events("apply.succeeded") == 1
    (apply_row,) = [r for r in await rows(h) if r.kind == "apply"]
    assert (apply_row.status, apply_row.attempts) == ("done", 2)
    assert "the outcome's transaction broke" in (apply_row.last_error or "")


async def _status(h: Harness, rid: int, status: str) -> bool:
    return (await h.request(rid)).status == status


async def _true(value: bool) -> bool:
    return value


async def _done(db: Database, count: int) -> bool:
    async with db.read() as session:
        done = await session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "done")
        )
    return done == count


async def test_any_commit_in_the_process_that_writes_rows_wakes_the_worker(db: Database) -> None:
    """The worker polls once a minute here; a row written by any code of the process (not a listener that
    remembered to nudge it) is delivered at once after its commit, on SQLite as on PostgreSQL."""
    await _a_row_written_is_delivered_at_once(db)


async def _a_row_written_is_delivered_at_once(db: Database) -> None:
    """A worker that polls once a minute delivers a row another write of its process commits within 10 s."""
    delivered = asyncio.Event()

    async def deliver(row: OutboxMessage) -> None:
        delivered.set()

    worker = OutboxWorker(db, {"notice": deliver}, poll_interval=60)
    worker.start()
    try:
        await asyncio.sleep(0.2)  # the worker has looked once, found nothing, and waits for its poll
        assert not delivered.is_set()
        async with db.write(serial=False) as session:
            await outbox_table.insert_rows(session, [{"kind": "notice", "key": "k", "payload": {}}])
        await asyncio.wait_for(delivered.wait(), 10)  # not the minute's poll
    finally:
        await worker.stop()


async def test_a_rolled_back_write_wakes_nobody(db: Database) -> None:
    woken = []
    undo = db.on_outbox(lambda: woken.append(1))
    try:
        with pytest.raises(RuntimeError):
            async with db.write(serial=False) as session:
                await outbox_table.insert_rows(session, [{"kind": "notice", "key": "k", "payload": {}}])
                raise RuntimeError("refused after writing")
        async with db.write(serial=False) as session:
            await outbox_table.insert_rows(session, [{"kind": "notice", "key": "k", "payload": {}}])
    finally:
        undo()
    assert woken == [1]  # the committed write only


async def test_a_seal_that_fails_after_the_outcomes_commit_fails_no_outcome(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: an outcome that writes an audit event (an apply's result) leaves it for the sealer. When
    that seal fails after the batch committed, the rows are still done and their after-commit work runs;
    the log says the events wait, and the next seal chains them."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite chains an event in its own transaction")
    async with db.write(serial=False) as session:
        await outbox_table.insert_rows(session, [{"kind": "notice", "key": "k", "payload": {}}])
    after: list[str] = []

    async def deliver(row: OutboxMessage) -> Callable[[AsyncSession], Awaitable[Callable[[], None]]]:
        async def record(session: AsyncSession) -> Callable[[], None]:
            await audit.append(session, audit.Entry(actor="test", action="partner.added", data={"n": 1}))
            return lambda: after.append("committed")

        return record

    real_seal = db.seal

    async def broken_seal(ids: Any = ()) -> None:
        raise ConnectionResetError("the connection went away after the commit")

    monkeypatch.setattr(db, "seal", broken_seal)
    worker = OutboxWorker(db, {"notice": deliver}, poll_interval=60)
    with caplog.at_level(logging.WARNING, logger="dpor"):
        worker.start()
        try:
            await until("the row done", lambda: _done(db, 1))
        finally:
            await worker.stop()
    assert after == ["committed"]
    assert any("not chained yet" in r.getMessage() for r in caplog.records)
    assert not any("could not be recorded" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(db, "seal", real_seal)
    await db.seal()
    result = await audit.verify(db)
    assert result.broken_seq is None and result.events >= 1


async def test_a_delivery_claims_again_only_when_its_end_may_have_freed_a_row(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker polls once a minute here, so every row below is delivered because a delivery's end or a
    commit woke it: a row queued behind another of its key from the start, one queued behind it while it
    was delivered, one its outcome wrote, rows waiting for a free slot, and on PostgreSQL one another
    process queued. An end that can have freed nothing (its key's queue empty, nothing written since its
    claim, no row waiting for a slot) claims nothing: an empty claim is a write transaction."""
    claims = 0
    claim = outbox_table.claim

    async def counted(*args: Any, **kw: Any) -> list[OutboxMessage]:
        nonlocal claims
        claims += 1
        return await claim(*args, **kw)

    monkeypatch.setattr(outbox_table, "claim", counted)
    gates: dict[str, asyncio.Event] = {}
    started: list[str] = []
    delivered: list[str] = []

    async def deliver(row: OutboxMessage) -> Callable[[AsyncSession], Awaitable[None]] | None:
        name = row.payload["name"]
        started.append(name)
        gate = gates.get(name)
        if gate is not None:
            await gate.wait()
        delivered.append(name)
        if name != "c1":
            return None

        async def record(session: AsyncSession) -> None:  # its outcome queues one more row
            await outbox_table.insert_rows(session, [notice("c", "c2")])

        return record

    def notice(key: str, name: str) -> dict[str, Any]:
        return {"kind": "notice", "key": key, "payload": {"name": name}}

    async def queue(*rows_: dict[str, Any], into: Database = db) -> None:
        async with into.write(serial=False) as session:
            await outbox_table.insert_rows(session, list(rows_))

    async def seen(*names: str) -> None:
        await until(f"{names} delivered", lambda: _true(set(names) <= set(delivered)), within=10)

    worker = OutboxWorker(db, {"notice": deliver}, poll_interval=60, concurrency=3)
    wakes, wake = 0, worker.wake

    def counted_wake() -> None:  # commits that wrote rows, notifications: what may call for a claim
        nonlocal wakes
        wakes += 1
        wake()

    worker.wake = counted_wake  # type: ignore[method-assign]
    worker.start()
    try:
        await asyncio.sleep(0.2)  # the worker has looked once, found nothing, and waits for its poll
        # Two rows of two keys, ending one at a time: no claim after the one that took them.
        gates.update({name: asyncio.Event() for name in ("q1", "q2")})
        await queue(notice("q1", "q1"), notice("q2", "q2"))
        await until("both claimed", lambda: _true({"q1", "q2"} <= set(started)))
        await asyncio.sleep(0.1)
        before, woken = claims, wakes
        for name in ("q1", "q2"):
            gates[name].set()
            await seen(name)
            await asyncio.sleep(0.1)
        await _settled(db)
        # None at all on SQLite; on PostgreSQL only for a wake (the listener's first, once connected).
        assert claims - before <= wakes - woken, (claims - before, wakes - woken)

        # A row queued behind another of its key from the start goes once the first is done.
        await queue(notice("a", "a1"), notice("a", "a2"))
        await seen("a1", "a2")
        assert delivered.index("a1") < delivered.index("a2")

        # A row queued behind one being delivered (the commit's claim finds it held up) goes at its end.
        gates["b1"] = asyncio.Event()
        await queue(notice("b", "b1"))
        await until("b1 claimed", lambda: _true("b1" in started))
        await queue(notice("b", "b2"))
        await asyncio.sleep(0.1)
        assert "b2" not in delivered
        gates["b1"].set()
        await seen("b1", "b2")

        # A row the outcome of a delivery wrote.
        await queue(notice("c", "c1"))
        await seen("c1", "c2")

        # Five rows for three slots.
        await queue(*(notice(f"d{n}", f"d{n}") for n in range(5)))
        await seen(*(f"d{n}" for n in range(5)))

        if not db.is_sqlite:  # another process's row behind ours: its NOTIFY (SQLite: the poll)
            other = Database(db.url, audit_key=db.audit_key)
            try:
                gates["e1"] = asyncio.Event()
                await queue(notice("e", "e1"))
                await until("e1 claimed", lambda: _true("e1" in started))
                await queue(notice("e", "e2"), into=other)
                await asyncio.sleep(0.1)
                gates["e1"].set()
                await seen("e1", "e2")
            finally:
                await other.dispose()
    finally:
        await worker.stop()


async def _settled(db: Database) -> None:
    async with db.read() as session:
        waiting = await session.scalar(
            select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status != "done")
        )
    assert waiting == 0


async def test_on_postgresql_a_deliverys_own_rows_wake_no_other_process(db: Database) -> None:
    """A commit outside any delivery NOTIFYs every process (this one hears it too, once); the rows a
    delivery's own commits write are its process's to claim when it ends: no NOTIFY for them. With the
    LISTEN connection down, this process's commits still wake its worker at once."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite has no NOTIFY")
    import asyncpg

    from storage import notify

    heard: list[str] = []
    listener = await asyncpg.connect(**notify._connect_args(db))
    await listener.add_listener(notify.CHANNEL, lambda *_args: heard.append("notify"))
    delivered: list[str] = []

    def row_named(name: str) -> dict[str, Any]:
        return {"kind": "notice", "key": "r", "payload": {"name": name}}

    async def deliver(row: OutboxMessage) -> Callable[[AsyncSession], Awaitable[None]] | None:
        delivered.append(row.payload["name"])
        if row.payload["name"] != "r1":
            return None

        async def record(session: AsyncSession) -> None:
            await outbox_table.insert_rows(session, [row_named("r2")])

        return record

    worker = OutboxWorker(db, {"notice": deliver}, poll_interval=60)
    worker.start()
    try:
        await asyncio.sleep(0.5)  # listening
        async with db.write(serial=False) as session:
            await outbox_table.insert_rows(session, [row_named("r1")])
        await until("r1 and the row its outcome wrote delivered", lambda: _true(delivered == ["r1", "r2"]))
        await asyncio.sleep(0.2)
        assert heard == ["notify"]  # r1's commit only
    finally:
        await worker.stop()
        await listener.close()


async def test_with_its_listen_connection_down_a_process_still_wakes_its_worker(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage import notify

    async def cannot_listen(*_args: Any) -> None:
        raise OSError("the LISTEN connection cannot be made")

    monkeypatch.setattr(notify, "_listen_once", cannot_listen)
    await _a_row_written_is_delivered_at_once(db)


async def _approved_with_its_apply_at_the_last_attempt(h: Harness) -> int:
    """A request approved while the worker is stopped, its apply row claimed by processes that all died
    (every attempt used): the next claim buries it. Returns the request's id."""
    rid = await new_request(h, f"set prod {NEW_PARTNER}", ADMIN)
    await until("the card posted", lambda: card_posted(h, rid))
    worker = h.bot.worker
    assert worker is not None
    await worker.stop()
    assert (await h.click("dpor_approve", rid, OWNER))[0] == 200
    async with h.bot.db.write(serial=False) as session:
        await session.execute(
            update(OutboxMessage).where(OutboxMessage.kind == "apply").values(attempts=worker.max_attempts)
        )
    return rid


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])
async def test_a_dead_apply_row_fails_its_request_in_the_same_transaction(
    harness_any_db: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply row abandoned by crashed processes goes dead, and its request fails (the card offers
    Retry) in the same transaction: when that write breaks (the database dropped the connection), neither
    happens and the row is tried again, so no moment shows a dead apply row beside a request still
    approved or applying, which would block its subscription with nothing left to finish it."""
    h = harness_any_db
    bot = h.bot
    rid = await _approved_with_its_apply_at_the_last_attempt(h)
    finish, broke = apply_module.finish, []

    async def breaks_once(*args: Any, **kw: Any) -> Any:
        if not broke:
            broke.append(True)
            raise RuntimeError("the connection dropped")
        return await finish(*args, **kw)

    monkeypatch.setattr(apply_module, "finish", breaks_once)
    seen: list[tuple[str, str]] = []

    async def buried() -> bool:
        # The row first: each statement of a read sees the newest commit (PostgreSQL's READ COMMITTED,
        # SQLite's autocommit), so a request read before the row could predate the commit that buried it.
        async with bot.db.read() as session:
            (row,) = (await session.scalars(select(OutboxMessage).where(OutboxMessage.kind == "apply"))).all()
            req = await session.get(ChangeRequest, rid)
        assert req is not None
        seen.append((row.status, req.status))
        return row.status == "dead"

    worker = outbox_worker(
        bot.ctx, bot.providers, bot.worker_client, poll_interval=0.05, lease=timedelta(seconds=1)
    )
    card_ts = (await h.request(rid)).card_ts

    async def retry_offered() -> bool:
        return "Retry" in json.dumps(h.slack.message(APPROVALS, card_ts).blocks)

    worker.start()
    try:
        await until("the row buried", buried)
        await until("the card offering Retry", retry_offered)
    finally:
        await worker.stop()
    assert broke and seen[-1] == ("dead", "failed"), seen
    assert not [s for s in seen if s[0] == "dead" and s[1] in ("approved", "applying")], seen


@pytest.mark.parametrize("bot_env", [{"DPOR_DM_APPROVERS_MAX": "0"}])
async def test_a_dead_recorder_that_always_fails_buries_the_row_without_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """When what a dead apply row records (its request's failure) cannot be written however often it is
    tried, the row is buried without it after a few more claims, with an error saying how to try the
    apply again, rather than claimed for ever."""
    h = harness
    bot = h.bot
    rid = await _approved_with_its_apply_at_the_last_attempt(h)

    async def always_breaks(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("the recorder is broken")

    monkeypatch.setattr(apply_module, "finish", always_breaks)

    async def apply_row() -> OutboxMessage:
        (row,) = [r for r in await rows(h) if r.kind == "apply"]
        return row

    async def dead() -> bool:
        return (await apply_row()).status == "dead"

    worker = outbox_worker(
        bot.ctx, bot.providers, bot.worker_client, poll_interval=0.05, lease=timedelta(seconds=0.5)
    )
    with caplog.at_level(logging.ERROR, logger="dpor"):
        worker.start()
        try:
            await until("the row dead", dead)
        finally:
            await worker.stop()
    row = await apply_row()
    assert row.attempts == bot.worker.max_attempts + DEAD_RECORDER_TRIES + 1, row.attempts
    assert any("marked dead without it" in r.getMessage() for r in caplog.records)
    assert (await h.request(rid)).status in ("approved", "applying")  # left as it was: retry tries again
