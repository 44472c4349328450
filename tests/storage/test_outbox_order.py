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
        assert await table.settle(session, ids[n], "w", table.DONE)


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
