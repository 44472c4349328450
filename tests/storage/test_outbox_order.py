"""The order rows of one key are claimed in (storage/outbox.py::claim), on both engines: a card's post
goes first; after it the card's updates do not wait for the steps queued for its thread, while a step
still waits for every earlier row of its card."""

from __future__ import annotations

from datetime import timedelta

from storage import outbox as table
from storage.db import Database

LEASE = timedelta(minutes=1)
KEY = "card:7"


async def claim(db: Database) -> list[tuple[str, str]]:
    async with db.write(serial=False) as session:
        rows = await table.claim(session, "w", LEASE, 10, skip_locked=not db.is_sqlite)
    return [(r.kind, r.payload["n"]) for r in rows]


async def done(db: Database, n: str) -> None:
    async with db.write(serial=False) as session:
        ids = {r.payload["n"]: r.id for r in await table.undelivered(session, (table.PENDING,))}
        assert (await table.settle(session, ids[n], "w", table.DONE)).settled


async def test_a_cards_update_does_not_wait_for_its_thread(db: Database) -> None:
    async with db.write(serial=False) as session:
        await table.insert_rows(
            session,
            [
                {"kind": "card", "key": KEY, "payload": {"n": "post"}},
                {"kind": "thread", "key": KEY, "payload": {"n": "approved"}},
                {"kind": "card", "key": KEY, "payload": {"n": "update"}},
                {"kind": "thread", "key": KEY, "payload": {"n": "applied"}},
                {"kind": "dm", "key": "dm:U1", "payload": {"n": "dm"}},
            ],
        )
    # The post first, alone among its card's rows; other keys are not held back.
    assert await claim(db) == [("card", "post"), ("dm", "dm")]
    assert await claim(db) == []  # everything else waits for the post
    await done(db, "post")
    # The update goes while the first step waits (before this rule it waited for that step's delivery).
    assert await claim(db) == [("thread", "approved"), ("card", "update")]
    await done(db, "update")
    assert await claim(db) == []  # the second step waits for the first
    await done(db, "approved")
    assert await claim(db) == [("thread", "applied")]


async def test_a_claim_leaves_the_rows_its_caller_still_holds(db: Database) -> None:
    """A row whose lease lapsed while this process still delivers it: another process may take it, this one
    does not take it a second time."""
    async with db.write(serial=False) as session:
        await table.insert_rows(session, [{"kind": "dm", "key": "dm:U1", "payload": {"n": "dm"}}])
    async with db.write(serial=False) as session:
        (row,) = await table.claim(session, "w", timedelta(0), 10, skip_locked=not db.is_sqlite)
    async with db.write(serial=False) as session:  # its lease is over at once
        assert await table.claim(session, "w", LEASE, 10, skip_locked=not db.is_sqlite, held=[row.id]) == []
    async with db.write(serial=False) as session:
        (again,) = await table.claim(session, "other", LEASE, 10, skip_locked=not db.is_sqlite)
    assert again.id == row.id


def first_of_each_key(rows: list[tuple[int, str, str, str]]) -> list[int]:
    """The rule, written plainly: a waiting row may go when no earlier waiting row of its key is in the way
    (for a card row, no earlier waiting card row)."""
    waiting = [(i, kind, key) for i, kind, key, status in rows if status == table.PENDING]
    free = []
    for i, kind, key in waiting:
        ahead = [k for j, k, other in waiting if other == key and j < i]
        if not ahead or (kind == "card" and "card" not in ahead):
            free.append(i)
    return free


async def test_long_queues_claim_exactly_the_first_row_of_each_key(db: Database) -> None:
    """Hundreds of rows queued on a few keys (the DMs to one person, cards with their threads), some
    delivered: a claim takes exactly the rows the rule lets go, in id order, however long the queues."""
    kinds = ["card", "thread", "dm", "card", "notify", "thread", "ask"]
    inserted = [
        {
            "kind": kinds[n % 7],
            "key": f"card:{n % 5}" if n % 7 in (0, 1, 3, 5, 6) else f"dm:U{n % 3}",
            "payload": {"n": str(n)},
        }
        for n in range(600)
    ]
    async with db.write(serial=False) as session:
        await table.insert_rows(session, inserted)
        rows = await table.undelivered(session, (table.PENDING,))
        for row in rows[::4]:  # a quarter delivered, here and there in every queue
            row.claimed_by = "w"
        await session.flush()
        for row in rows[::4]:
            assert (await table.settle(session, row.id, "w", table.DONE)).settled
    async with db.read() as session:
        everything = await table.undelivered(session, (table.PENDING,))
    by_id = {r.id: r for r in everything}
    done_ids = {r.id for r in rows[::4]}
    listing = [(r.id, r.kind, r.key, table.DONE if r.id in done_ids else table.PENDING) for r in rows]
    expected = first_of_each_key(listing)
    assert expected and len(expected) < 30  # a handful of keys: a few rows may go, the rest wait

    async with db.write(serial=False) as session:
        claimed = await table.claim(session, "w", LEASE, 100, skip_locked=not db.is_sqlite)
    assert [r.id for r in claimed] == expected
    assert all(by_id[i].status == table.PENDING for i in expected)
