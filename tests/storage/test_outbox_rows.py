"""An outbox row's outcome and the rows a card's delivery covers (storage/outbox.py), on both engines:
the statements built once write what each call says, and only to the rows it names; rows go in in
the order given."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from storage import outbox as table
from storage.db import Database
from storage.models import utcnow

LEASE = timedelta(minutes=1)


async def queued(db: Database, rows: list[tuple[str, str, str]]) -> list[int]:
    async with db.write(serial=False) as session:
        await table.insert_rows(session, [{"kind": k, "key": key, "payload": {"n": n}} for k, key, n in rows])
        return [r.id for r in await table.undelivered(session, (table.PENDING,))]


async def state(db: Database) -> dict[str, tuple]:
    async with db.read() as session:
        rows = await table.undelivered(session, (table.PENDING, table.DONE, table.DEAD))
    return {r.payload["n"]: (r.status, r.claimed_by, r.attempts, r.last_error, r) for r in rows}


async def test_an_outcome_is_written_by_the_holder_only(db: Database) -> None:
    await queued(db, [("dm", "dm:U1", "a"), ("dm", "dm:U2", "b"), ("dm", "dm:U3", "c")])
    async with db.write(serial=False) as session:
        a, b, c = await table.claim(session, "w", LEASE, 10, skip_locked=not db.is_sqlite)
    later = utcnow() + timedelta(minutes=5)
    async with db.write(serial=False) as session:
        assert not (
            await table.settle(session, a.id, "someone else", table.DONE, delivered_at=utcnow())
        ).settled
        assert (await table.settle(session, a.id, "w", table.DONE, delivered_at=utcnow())).settled
        settled = await table.settle(
            session, b.id, "w", table.PENDING, last_error="429", attempts=0, available_at=later
        )
        assert settled.settled
        settled = await table.settle(
            session, c.id, "w", table.DEAD, last_error="channel_not_found", attempts=3
        )
        assert settled.settled
        assert not (await table.settle(session, a.id, "w", table.DONE)).settled  # no longer held
    rows = await state(db)
    assert rows["a"][:2] == ("done", None) and rows["a"][4].delivered_at is not None
    assert rows["b"][:4] == ("pending", None, 0, "429")
    assert rows["b"][4].available_at == later  # a time, not a string: the column's type was applied
    assert rows["c"][:4] == ("dead", None, 3, "channel_not_found")


async def test_an_outcome_says_whether_rows_of_its_key_wait_unclaimed(db: Database) -> None:
    """What the worker claims again for: rows of the settled row's key that wait and no worker holds
    (due or not); rows held by a worker, rows of other keys, and the row itself do not count."""
    await queued(
        db,
        [
            ("dm", "dm:U1", "a1"),
            ("dm", "dm:U1", "a2"),
            ("dm", "dm:U2", "b1"),
            ("notify", "c:C1", "c1"),
            ("thread", "card:1", "t1"),
            ("card", "card:1", "k1"),  # a card's row passes its thread's: both are claimed
        ],
    )

    async def claim() -> dict[str, Any]:
        async with db.write(serial=False) as session:
            claimed = await table.claim(session, "w", LEASE, 10, skip_locked=not db.is_sqlite)
        return {r.payload["n"]: r for r in claimed}

    first = await claim()
    assert sorted(first) == ["a1", "b1", "c1", "k1", "t1"]  # a2 waits behind a1
    async with db.write(serial=False) as session:

        async def done(n: str, key: str | None) -> table.Settled:
            return await table.settle(session, first[n].id, "w", table.DONE, key=key, delivered_at=utcnow())

        a1, b1, t1, unasked = (
            await done("a1", "dm:U1"),
            await done("b1", "dm:U2"),
            await done("t1", "card:1"),
            await done("c1", None),
        )
    assert all(s.settled for s in (a1, b1, t1, unasked))
    assert a1.followed  # a2 waits
    assert not b1.followed  # nothing else of dm:U2
    assert not t1.followed  # k1 is in a worker's hands: its own end wakes that worker
    assert unasked.followed  # not asked (no key): the worker claims again, as it always did
    (a2,) = (await claim()).values()
    async with db.write(serial=False) as session:
        await table.insert_rows(session, [{"kind": "dm", "key": "dm:U1", "payload": {"n": "a3"}}])
        retried = await table.settle(
            session, a2.id, "w", table.PENDING, key="dm:U1", attempts=1, available_at=utcnow() + LEASE
        )
    assert retried.settled and retried.followed  # a3 waits, unclaimed


async def test_a_card_covers_the_later_card_rows_of_its_key_only(db: Database) -> None:
    ids = await queued(
        db,
        [
            ("card", "card:1", "post"),
            ("card", "card:1", "update 1"),
            ("thread", "card:1", "step"),
            ("card", "card:1", "update 2"),
            ("card", "card:2", "other card"),
            ("card", "card:1", "update 3"),
        ],
    )
    async with db.write(serial=False) as session:
        # The post's delivery showed the card as of update 2: updates 1 and 2 need no call of their own.
        await table.cover(session, "card:1", table.CARD, ids[0], ids[3])
    rows = await state(db)
    covered = {n for n, r in rows.items() if r[0] == "done"}
    assert covered == {"update 1", "update 2"}
    assert rows["update 1"][3] == f"covered by row {ids[0]}" and rows["update 1"][4].delivered_at is not None
    assert {rows[n][0] for n in ("post", "step", "other card", "update 3")} == {"pending"}


async def test_rows_are_inserted_in_the_order_given_whatever_columns_they_name(db: Database) -> None:
    later = utcnow() + timedelta(hours=1)
    rows = [
        {"kind": "dm", "key": "k", "payload": {"n": "a"}},
        {"kind": "dm", "key": "k", "payload": {"n": "b"}, "available_at": later},
        {"kind": "dm", "key": "k", "payload": {"n": "c"}},
        {"kind": "dm", "key": "k", "payload": {"n": "d"}},
    ]
    async with db.write(serial=False) as session:
        await table.insert_rows(session, rows)
    async with db.read() as session:
        found = await table.undelivered(session, (table.PENDING,))
    assert [r.payload["n"] for r in found] == ["a", "b", "c", "d"]  # ids in the order given
    assert all((r.status, r.attempts) == (table.PENDING, 0) for r in found)  # the columns' defaults
    assert found[1].available_at == later
    assert all(r.available_at <= utcnow() for r in (found[0], found[2], found[3]))


async def test_a_lease_renewal_never_waits_for_a_row_being_settled(db: Database) -> None:
    """PostgreSQL: the worker's lease renewal skips a row another transaction holds (an outcome being
    written) instead of waiting for it; waiting, the two deadlocked under load and PostgreSQL aborted
    one after a second. The rows not held are renewed."""
    if db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite writes one transaction at a time")
    await queued(db, [("dm", "dm:U1", "a"), ("dm", "dm:U2", "b")])
    async with db.write(serial=False) as session:
        a, b = await table.claim(session, "w", LEASE, 10, skip_locked=True)
    leased = (await state(db))["a"][4].claimed_until

    async def renew() -> None:
        async with db.write(serial=False) as session:
            await table.renew(session, [a.id, b.id], "w", timedelta(minutes=10))

    async with db.write(serial=False) as settling:  # b's outcome, its row locked until this commits
        assert await table.settle(settling, b.id, "w", table.DONE, delivered_at=utcnow())
        await asyncio.wait_for(renew(), 5)
    rows = await state(db)
    assert rows["a"][1] == "w" and rows["a"][4].claimed_until > leased
    assert rows["b"][:2] == ("done", None)
