"""What a commit promises: on SQLite it is on the disk (synchronous=FULL) before anyone hears of it; on
PostgreSQL a commit that wrote outbox rows wakes every listening worker (NOTIFY dpor_outbox), a rollback
wakes none, and a listener whose connection is cut reconnects."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from storage import notify
from storage import outbox as table
from storage.db import Database

ROW = {"kind": "notify", "key": "channel:C1", "payload": {"channel": "C1"}}


async def test_sqlite_commits_are_durable(database_url: str) -> None:
    db = Database(database_url)
    try:
        if not db.is_sqlite:
            pytest.skip("a PostgreSQL commit is durable by default (synchronous_commit=on)")
        async with db.read() as session:
            assert (await session.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
        async with db.write(serial=False) as session:
            assert (await session.execute(text("PRAGMA synchronous"))).scalar() == 2
            assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await db.dispose()


async def test_postgresql_synchronous_commit_is_on(database_url: str) -> None:
    db = Database(database_url)
    try:
        if db.is_sqlite:
            pytest.skip("PostgreSQL only")
        async with db.read() as session:
            assert (await session.execute(text("SHOW synchronous_commit"))).scalar() == "on"
    finally:
        await db.dispose()


class Wakes:
    def __init__(self) -> None:
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self.event.set()

    async def next(self, within: float = 2.0) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), within)
            return True
        except TimeoutError:
            return False
        finally:
            self.event.clear()


async def add_row(db: Database) -> None:
    """One outbox row, committed: a NOTIFY on PostgreSQL."""
    async with db.write(serial=False) as session:
        await table.insert_rows(session, [ROW])


async def test_a_commit_with_outbox_rows_wakes_listeners_and_a_rollback_does_not(database_url: str) -> None:
    writer, listener = Database(database_url), Database(database_url)  # two processes' engines
    wakes = Wakes()
    try:
        async with notify.listen(listener, wakes):
            if listener.is_sqlite:
                await add_row(writer)
                assert not await wakes.next(0.3)  # SQLite: one process, it wakes its own worker
                return
            assert await wakes.next()  # once on connecting: rows may have come while nobody listened
            with pytest.raises(RuntimeError):
                async with writer.write(serial=False) as session:
                    await table.insert_rows(session, [ROW])
                    raise RuntimeError("rolled back")
            assert not await wakes.next(0.5)
            async with writer.write(serial=False) as session:
                await table.insert_rows(session, [ROW])
                await table.insert_rows(session, [])  # no rows: no notification of its own
                assert not await wakes.next(0.3)  # not before the commit
            assert await wakes.next(1.0)
            async with writer.write(serial=False) as session:
                await table.insert_rows(session, [])
            assert not await wakes.next(0.3)
    finally:
        await writer.dispose()
        await listener.dispose()


async def test_a_listener_whose_connection_is_cut_reconnects(database_url: str) -> None:
    writer, listener = Database(database_url), Database(database_url)
    if writer.is_sqlite:
        pytest.skip("PostgreSQL only")
    wakes = Wakes()
    try:
        async with notify.listen(listener, wakes):
            assert await wakes.next()
            async with writer.write(serial=False) as session:
                cut = await session.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                )
                assert cut.scalars().all() == [True]
            assert await wakes.next(3.0)  # reconnected, and woke once in case rows came meanwhile
            await add_row(writer)
            assert await wakes.next(1.0)
    finally:
        await writer.dispose()
        await listener.dispose()


class Blackhole:
    """A TCP relay to PostgreSQL that can go silent: the connections through it stay open but nothing
    passes any more, as when a NAT or firewall drops an idle flow, or a failover leaves the old address
    behind. Neither end hears of it; connections made after `silence()` pass again."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.silenced: list[asyncio.Event] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.forgotten: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        for silent in self.silenced:
            silent.set()

    def reset(self) -> None:
        """The connections through it are forgotten, as a NAT forgets an idle flow: the next packet either
        end sends is answered with a reset. Connections made after `reset()` pass."""
        for forgotten in self.forgotten:
            forgotten.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.port)
        silent, forgotten = asyncio.Event(), asyncio.Event()
        self.silenced.append(silent)
        self.forgotten.append(forgotten)
        self.writers += [writer, upstream_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    if forgotten.is_set():
                        for end in (writer, upstream_writer):
                            end.transport.abort()  # SO_LINGER 0: a reset, not a close
                        return
                    if not silent.is_set():
                        dst.write(data)
                        await dst.drain()

        # Either end closing closes both (the other end is not told until then).
        pipes = [
            asyncio.ensure_future(pipe(reader, upstream_writer)),
            asyncio.ensure_future(pipe(upstream_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            writer.close()
            upstream_writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.1)  # the relays see their ends close


Holed = tuple[Database, Database, Blackhole, dict[str, Any]]


@contextlib.asynccontextmanager
async def _through_a_hole(database_url: str) -> AsyncIterator[Holed]:
    """A writer and a listener on PostgreSQL (skipped on SQLite), and the listener's connection arguments
    through a Blackhole to the server; all closed afterwards."""
    writer, listener = Database(database_url), Database(database_url)
    if writer.is_sqlite:
        pytest.skip("PostgreSQL only")
    direct = notify._connect_args(listener)
    hole = Blackhole(direct["host"], direct["port"])
    try:
        yield writer, listener, hole, {**direct, "host": "127.0.0.1", "port": await hole.start()}
    finally:
        await writer.dispose()
        await listener.dispose()
        await hole.close()


async def test_a_listener_whose_connection_goes_silent_listens_again(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LISTEN connection is cut without a word (no FIN, no RST: an idle flow dropped by a NAT, a
    failover): nothing tells the listener, so it must find out by asking. Once it has, it listens on a new
    connection and wakes, and the next commit wakes it again."""
    async with _through_a_hole(database_url) as (writer, listener, hole, through):
        monkeypatch.setattr(notify, "_connect_args", lambda _db: through)
        monkeypatch.setattr(notify, "PING_EVERY", 0.5, raising=False)
        monkeypatch.setattr(notify, "PING_TIMEOUT", 0.5, raising=False)
        wakes = Wakes()
        async with notify.listen(listener, wakes):
            assert await wakes.next()
            hole.silence()
            await add_row(writer)
            assert await wakes.next(5.0)  # found out, reconnected, and woke for the rows it missed
            assert listener.listening == 1
            await add_row(writer)
            assert await wakes.next(1.0)


async def test_a_listener_whose_connection_is_reset_when_asked_listens_again_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NAT that forgot an idle flow answers the ping with a reset: the connection is lost during the
    ping rather than between two. It was up, so the listener connects again at once, as when it closes
    between pings, not after the backoff of the failures before it was up."""
    async with _through_a_hole(database_url) as (_, listener, hole, through):
        failures = iter(range(4))  # the server is away at first: the backoff grows to 4 s

        def connect_args(_db: Database) -> dict[str, object]:
            return {**through, "port": 1} if next(failures, None) is not None else through

        monkeypatch.setattr(notify, "_connect_args", connect_args)
        monkeypatch.setattr(notify, "BACKOFF_FIRST", 0.25)
        monkeypatch.setattr(notify, "PING_EVERY", 0.5)
        wakes = Wakes()
        async with notify.listen(listener, wakes):
            assert await wakes.next(10.0)  # connected at the fifth try
            hole.reset()  # the next ping, within 0.5 s, is answered with a reset
            assert await wakes.next(2.5)  # connected again, and woke for the rows it may have missed
            assert listener.listening == 1


async def test_a_listener_connects_with_the_drivers_arguments_in_the_url(database_url: str) -> None:
    """DATABASE_URL may carry the driver's own arguments: `?ssl=require` (how TLS is asked for: managed
    PostgreSQL such as Azure's requires it), `prepared_statement_cache_size=0` (behind a pooler). The
    LISTEN connection takes them as the engine does, rather than passing them to the server as settings,
    which it refuses ("parameter "ssl" cannot be changed now"): then no process would ever listen."""
    if database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL only")
    query = {"ssl": "prefer", "prepared_statement_cache_size": "0"}
    url = make_url(database_url).update_query_dict(query).render_as_string(hide_password=False)
    writer, listener = Database(url), Database(url)
    wakes = Wakes()
    try:
        async with notify.listen(listener, wakes):
            assert await wakes.next()  # connected
            await add_row(writer)
            assert await wakes.next(1.0)
    finally:
        await writer.dispose()
        await listener.dispose()
