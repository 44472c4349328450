"""The connection pool (storage/db.py): sessions that overlap reuse the connections the pool keeps,
rather than opening and closing one per session (on SQLite its PRAGMAs, on PostgreSQL a server
backend), and `serve` keeps DPOR_DB_POOL_SIZE of them."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError
from sqlalchemy import event, select

from bot.settings import Settings
from storage.db import POOL_OVERFLOW, Database
from storage.models import Subscription
from tests.harness import OWNER, start_harness


async def connections_opened(db: Database) -> int:
    """Five bursts of twenty sessions at once, as a loaded process sees: how many connections opened."""
    opened = 0

    def count(*_: object) -> None:
        nonlocal opened
        opened += 1

    async def read() -> None:
        async with db.read() as session:
            await session.scalars(select(Subscription.id).limit(1))
            await asyncio.sleep(0)  # held across a turn of the loop, as a request's session is

    event.listen(db.engine.sync_engine, "connect", count)
    try:
        for _ in range(5):
            await asyncio.gather(*(read() for _ in range(20)))
        return opened
    finally:
        await db.dispose()


async def test_overlapping_sessions_reuse_the_pools_connections(database_url: str) -> None:
    opened = await connections_opened(Database(database_url, pool_size=24))
    assert 0 < opened <= 20  # the first burst opened them; the next four reused them


async def test_a_pool_smaller_than_the_overlap_opens_connections_again(database_url: str) -> None:
    """The behaviour the pool size prevents: with room for 2, each burst of 20 opens the overflow anew."""
    opened = await connections_opened(Database(database_url, pool_size=2))
    assert opened > 2 + POOL_OVERFLOW  # overflow connections were closed and opened again


async def test_serve_keeps_the_configured_number_of_connections(database_url: str) -> None:
    async for harness in start_harness(database_url, DPOR_DB_POOL_SIZE="7"):
        assert harness.bot.db.engine.sync_engine.pool.size() == 7
        status, _ = await harness.command("show prod", OWNER)  # and the bot answers through it
        assert status == 200


def test_a_pool_size_out_of_range_is_refused_with_its_range() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(DPOR_DB_POOL_SIZE="0")
    assert "DPOR_DB_POOL_SIZE" in str(raised.value) and "greater than or equal to 1" in str(raised.value)


async def test_a_read_gives_its_connection_back_however_it_ends(db: Database) -> None:
    """Ended normally, by an exception or by its task's cancellation, a read's session is closed and its
    connection back in the pool; on SQLite in the reading task itself, with no task of its own."""
    made: list[str] = []
    loop = asyncio.get_running_loop()

    def factory(loop_: asyncio.AbstractEventLoop, coro, **kwargs) -> asyncio.Task:  # type: ignore[no-untyped-def]
        made.append(getattr(coro, "__qualname__", repr(coro)))
        return asyncio.Task(coro, loop=loop_, **kwargs)

    async def read(then: str, entered: asyncio.Event) -> None:
        async with db.read() as session:
            assert await session.scalar(select(Subscription.id).limit(1)) is None
            entered.set()
            if then == "raise":
                raise LookupError("the caller's own error")
            if then == "wait":
                await asyncio.Event().wait()

    loop.set_task_factory(factory)
    try:
        await read("return", asyncio.Event())
        with pytest.raises(LookupError):
            await read("raise", asyncio.Event())
        entered = asyncio.Event()
        task = asyncio.ensure_future(read("wait", entered))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        loop.set_task_factory(None)
    assert db.engine.sync_engine.pool.checkedout() == 0
    if db.is_sqlite:
        assert [name for name in made if not name.endswith("<locals>.read")] == [], made
