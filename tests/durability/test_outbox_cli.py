"""`dpor-bot outbox list [--dead]`, `dpor-bot outbox retry ID|--all-dead` and `dpor-bot outbox discard
ID|--all-dead`: see dead rows, requeue them, or set aside for good those that can never be delivered."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import insert, select

from bot import cli
from storage import outbox as table
from storage.db import Database
from storage.models import AuditEvent, OutboxMessage, utcnow


def dpor_bot(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(cli.cli, list(args), env={"DATABASE_URL": database_url}, catch_exceptions=False)


def outbox_rows(database_url: str, rows: list[dict[str, object]] | None = None) -> list[tuple[int, str, int]]:
    """Insert `rows`, then read back every row's (id, status, attempts)."""

    async def work() -> list[tuple[int, str, int]]:
        db = Database(database_url)
        try:
            if rows:
                async with db.write(serial=False) as session:
                    await session.execute(insert(OutboxMessage), rows)
            async with db.read() as session:
                query = select(OutboxMessage.id, OutboxMessage.status, OutboxMessage.attempts)
                return [tuple(r) for r in await session.execute(query.order_by(OutboxMessage.id))]
        finally:
            await db.dispose()

    return asyncio.run(work())


@pytest.fixture
def rows(database_url: str) -> str:
    """A delivered row (1), a waiting one (2) and two dead ones (3, 4)."""
    later = utcnow() + timedelta(minutes=5)
    outbox_rows(
        database_url,
        [
            {"kind": "card", "key": "card:1", "payload": {"request_id": 1}, "status": "done", "attempts": 1},
            {"kind": "dm", "key": "dm:U1", "payload": {}, "attempts": 2, "available_at": later},
            {
                "kind": "notify",
                "key": "channel:C1",
                "payload": {"channel": "C1"},
                "status": "dead",
                "attempts": 1,
                "last_error": "Slack answered not_in_channel",
            },
            {
                "kind": "card",
                "key": "card:2",
                "payload": {"request_id": 2},
                "status": "dead",
                "attempts": 8,
                "last_error": "Slack answered internal_error\nsecond line",
            },
        ],
    )
    return database_url


def test_list_shows_waiting_and_dead_rows(rows: str) -> None:
    result = dpor_bot(rows, "outbox", "list")
    assert result.exit_code == 0, result.output
    header, *lines = result.output.splitlines()
    assert header.split() == ["ID", "KIND", "KEY", "STATUS", "ATTEMPTS", "NEXT_ATTEMPT", "LAST_ERROR"]
    assert [line.split()[:5] for line in lines] == [
        ["2", "dm", "dm:U1", "pending", "2"],
        ["3", "notify", "channel:C1", "dead", "1"],
        ["4", "card", "card:2", "dead", "8"],
    ]
    assert lines[1].endswith("Slack answered not_in_channel")
    assert lines[2].endswith("Slack answered internal_error second line")

    result = dpor_bot(rows, "outbox", "list", "--dead")
    assert [line.split()[0] for line in result.output.splitlines()[1:]] == ["3", "4"]


def test_list_says_when_there_is_nothing(database_url: str) -> None:
    assert dpor_bot(database_url, "outbox", "list").output == "nothing waiting in the outbox\n"
    assert dpor_bot(database_url, "outbox", "list", "--dead").output == "no dead outbox rows\n"


def test_retry_one_dead_row_then_all(rows: str) -> None:
    result = dpor_bot(rows, "outbox", "retry", "4")
    assert (result.exit_code, result.output) == (0, "requeued outbox row 4\n")
    assert outbox_rows(rows) == [(1, "done", 1), (2, "pending", 2), (3, "dead", 1), (4, "pending", 0)]
    result = dpor_bot(rows, "outbox", "retry", "--all-dead")
    assert (result.exit_code, result.output) == (0, "requeued outbox row 3\n")
    assert dpor_bot(rows, "outbox", "retry", "--all-dead").output == "no dead outbox rows\n"
    assert [status for _, status, _ in outbox_rows(rows)] == ["done", "pending", "pending", "pending"]


def test_retry_refuses_what_is_not_a_dead_row(rows: str) -> None:
    for row_id, reason in (("1", "outbox row 1 is done, not dead"), ("9", "there is no outbox row 9")):
        result = CliRunner().invoke(cli.cli, ["outbox", "retry", row_id], env={"DATABASE_URL": rows})
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {reason}") and len(result.output.splitlines()) == 1
    for args in ([], ["3", "--all-dead"], ["three"]):
        result = CliRunner().invoke(cli.cli, ["outbox", "retry", *args], env={"DATABASE_URL": rows})
        assert result.exit_code == 2, result.output
    assert [status for _, status, _ in outbox_rows(rows)] == ["done", "pending", "dead", "dead"]


def audit_events(database_url: str) -> list[tuple[str, str, int | None, dict]]:
    async def work() -> list[tuple[str, str, int | None, dict]]:
        db = Database(database_url)
        try:
            async with db.read() as session:
                query = select(AuditEvent.actor, AuditEvent.action, AuditEvent.request_id, AuditEvent.data)
                return [tuple(r) for r in await session.execute(query.order_by(AuditEvent.seq))]
        finally:
            await db.dispose()

    return asyncio.run(work())


def dead_count(database_url: str) -> int:
    async def work() -> int:
        db = Database(database_url)
        try:
            async with db.read() as session:
                return (await table.stats(session)).dead  # what dpor_outbox_dead, and its alert, read
        finally:
            await db.dispose()

    return asyncio.run(work())


def test_discard_sets_dead_rows_aside_for_good_and_audits_it(rows: str) -> None:
    """A dead row that can never be delivered (its card deleted, its channel gone) kept the dead-rows gauge,
    and the DporDeadOutboxRows alert, up for good: nothing but SQL could clear it."""
    assert dead_count(rows) == 2
    result = dpor_bot(rows, "outbox", "discard", "4")
    assert (result.exit_code, result.output) == (0, "discarded outbox row 4\n")
    assert outbox_rows(rows) == [(1, "done", 1), (2, "pending", 2), (3, "dead", 1), (4, "discarded", 8)]
    assert dead_count(rows) == 1
    listed = dpor_bot(rows, "outbox", "list").output.splitlines()[1:]
    assert [line.split()[0] for line in listed] == ["2", "3"]
    refused = dpor_bot(rows, "outbox", "retry", "4").output
    assert refused.startswith("error: outbox row 4 is discarded, not dead")
    result = dpor_bot(rows, "outbox", "discard", "--all-dead")
    assert (result.exit_code, result.output) == (0, "discarded outbox row 3\n")
    assert dpor_bot(rows, "outbox", "discard", "--all-dead").output == "no dead outbox rows\n"
    assert dead_count(rows) == 0
    events = [e for e in audit_events(rows) if e[1] == "outbox.discarded"]
    assert [(request_id, data["row"], data["kind"], data["key"]) for _, _, request_id, data in events] == [
        (2, 4, "card", "card:2"),
        (None, 3, "notify", "channel:C1"),
    ]
    assert events[0][3]["last_error"] == "Slack answered internal_error\nsecond line"
    assert all(actor.startswith("cli:") for actor, *_ in events), events


def test_discard_refuses_what_is_not_a_dead_row(rows: str) -> None:
    for row_id, status in (("1", "done"), ("2", "pending")):
        reason = f"outbox row {row_id} is {status}, not dead"
        result = CliRunner().invoke(cli.cli, ["outbox", "discard", row_id], env={"DATABASE_URL": rows})
        assert result.exit_code == 1
        assert result.output.startswith(f"error: {reason}") and len(result.output.splitlines()) == 1
    result = CliRunner().invoke(cli.cli, ["outbox", "discard", "9"], env={"DATABASE_URL": rows})
    assert result.exit_code == 1 and result.output.startswith("error: there is no outbox row 9")
    for args in ([], ["3", "--all-dead"]):
        result = CliRunner().invoke(cli.cli, ["outbox", "discard", *args], env={"DATABASE_URL": rows})
        assert result.exit_code == 2, result.output
    assert [status for _, status, _ in outbox_rows(rows)] == ["done", "pending", "dead", "dead"]
    assert [e for e in audit_events(rows) if e[1] == "outbox.discarded"] == []


def test_outbox_commands_have_help() -> None:
    for args in (["outbox"], ["outbox", "list"], ["outbox", "retry"], ["outbox", "discard"]):
        result = CliRunner().invoke(cli.cli, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("status", ["approved", "applying"])
def test_discard_refuses_an_apply_row_whose_request_is_still_open(database_url: str, status: str) -> None:
    """A dead apply row beside a request still approved or applying (its death's recorder gave up): that
    request blocks its subscription until the apply ends, and only the row can end it (`outbox retry`).
    Discarded, the request would stay open for good, with no command left to finish it."""
    from storage.models import ChangeRequest, Subscription

    async def seed() -> None:
        db = Database(database_url)
        try:
            async with db.write(serial=False) as session:
                session.add(Subscription(id="00000000-0000-0000-0000-000000000001", name="prod"))
                await session.flush()
                session.add(
                    ChangeRequest(
                        id=7,
                        team_id="T1",
                        subscription_id="00000000-0000-0000-0000-000000000001",
                        partner_id="1234567",
                        requester_id="U1",
                        status=status,
                        expires_at=utcnow() + timedelta(days=1),
                    )
                )
        finally:
            await db.dispose()

    asyncio.run(seed())
    dead_apply = {
        "kind": "apply",
        "key": "apply:7",
        "payload": {"request_id": 7},
        "status": "dead",
        "attempts": 9,
        "last_error": "3 attempts, the last ended without an outcome (its process stopped)",
    }
    assert outbox_rows(database_url, [dead_apply]) == [(1, "dead", 9)]
    for args in (["1"], ["--all-dead"]):
        result = CliRunner().invoke(cli.cli, ["outbox", "discard", *args], env={"DATABASE_URL": database_url})
        assert result.exit_code == 1, result.output
        assert "request #7" in result.output and "outbox retry 1" in result.output, result.output
    assert outbox_rows(database_url) == [(1, "dead", 9)]
    assert [e for e in audit_events(database_url) if e[1] == "outbox.discarded"] == []


def test_a_retry_and_a_discard_of_one_dead_row_at_once_do_not_both_claim_it(
    rows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`outbox retry 4` reads row 4 dead, then `outbox discard 4` (another operator, another process) sets it
    aside before the retry writes: the retry must not answer "requeued outbox row 4" for a row it left
    discarded (on PostgreSQL the check and the write are one only if the check locks the row)."""
    from bot import outbox as outbox_module

    checked, discarded = asyncio.Event(), asyncio.Event()
    real_statuses_of = table.statuses_of

    async def statuses_then_wait(session, ids):  # type: ignore[no-untyped-def]
        found = await real_statuses_of(session, ids)
        checked.set()
        await asyncio.wait_for(discarded.wait(), 2)  # the discard's transaction ends first, unless blocked
        return found

    async def work() -> tuple[list[int] | str, list[int]]:
        retrier, discarder = Database(rows), Database(rows)
        try:
            monkeypatch.setattr(table, "statuses_of", statuses_then_wait)

            async def retry() -> list[int] | str:
                try:
                    return await outbox_module.requeue(retrier, [4])
                except Exception as exc:  # a refusal, or the discard blocked behind it
                    return type(exc).__name__

            retried = asyncio.ensure_future(retry())
            await checked.wait()
            monkeypatch.setattr(table, "statuses_of", real_statuses_of)
            discarding = asyncio.ensure_future(outbox_module.discard(discarder, [4], actor="cli:other"))
            await asyncio.wait({discarding}, timeout=1)  # it ends, or it waits behind the retry's lock
            discarded.set()
            result = await retried
            try:
                gone = await discarding
            except Exception:
                gone = []
            return result, gone
        finally:
            await retrier.dispose()
            await discarder.dispose()

    requeued, gone = asyncio.run(work())
    status = dict((row_id, s) for row_id, s, _ in outbox_rows(rows))[4]
    assert (requeued == [4]) == (status == "pending"), (requeued, gone, status)
    assert (gone == [4]) == (status == "discarded"), (requeued, gone, status)
