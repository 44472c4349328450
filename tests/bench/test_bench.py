"""The benchmark's light-load and memory measurements work against a real `dpor-bot serve` on SQLite; its
large database is seeded with a valid chain (and vacuumed on PostgreSQL) on both engines.

A few requests only (the full benchmark is `python -m bench.run`): the numbers are positive and ordered.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from bench import latency, load, report, run, seed
from bot import audit
from bot.settings import normalise_database_url
from sandbox.standin import SlackStandin
from storage.db import Database


def test_percentile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert latency.percentile(values, 50) == 3.0
    assert latency.percentile(values, 99) == 5.0
    assert latency.percentile([7.0], 99) == 7.0


async def test_light_load_and_memory_of_serve(tmp_path: Path) -> None:
    started = time.monotonic()
    url = normalise_database_url(f"sqlite:///{tmp_path / 'bench.db'}")
    await seed.small(url, subscriptions=5)
    async with (
        SlackStandin(bot_token=run.TOKEN) as slack,
        run.serve(slack, url, tmp_path / "serve.log") as (port, proc),
    ):
        idle = latency.rss_mb(proc.pid)
        cpu_idle = load.cpu_seconds(proc.pid)
        subs = await seed.open_subscriptions(url, limit=3)
        measured = await latency.light_load(slack, port, run.SECRET, subs, 3)
        # the CPU the six requests and their deliveries cost, read once the process is quiet again
        cpu_after = await load.idle_cpu_seconds(proc.pid)
        assert cpu_after > cpu_idle and load.cpu_seconds(proc.pid) - cpu_after < 0.5
        after = latency.rss_mb(proc.pid)
        peak = latency.peak_mb(proc.pid)

    posted, applied = measured
    assert posted.measurement.startswith("`set`") and applied.measurement.startswith("Approve")
    for m in measured:
        assert m.samples == 3 and m.errors == 0, m
        assert 0 < m.p50_ms <= m.p99_ms <= m.max_ms, m
    # each is a real round trip through the bot, not an artefact of the clocks
    assert applied.p50_ms < 10_000 and posted.p50_ms < 10_000
    assert 20 < idle <= peak and 20 < after <= peak, (idle, after, peak)

    table = report.latencies("dpor-bot (sqlite)", measured)
    assert table.splitlines()[0].startswith("| target |") and "card posted" in table
    assert time.monotonic() - started < 30


def test_two_processes_add_their_rates_and_keep_the_worse_latencies() -> None:
    from bench.load import Result
    from bench.pair import _combined

    one = Result("a", "set", 40.0, 100.0, 300.0, 400.0, 160, 0, cpu_ms=10.0)
    two = Result("b", "set", 25.5, 150.0, 250.0, 500.0, 102, 1, error_detail=["timeout 1"], cpu_ms=20.0)
    both = _combined("two", "set", [one, two])
    assert (both.requests_per_s, both.p50_ms, both.p99_ms, both.max_ms) == (65.5, 150.0, 300.0, 500.0)
    assert (both.requests, both.errors, both.error_detail) == (262, 1, ["timeout 1"])
    assert both.cpu_ms == round((10.0 * 160 + 20.0 * 102) / 262, 2)  # weighted by each one's requests
    unmeasured = Result("c", "set", 1.0, 1.0, 1.0, 1.0, 10, 0)
    assert _combined("two", "set", [one, unmeasured]).cpu_ms is None


async def test_the_large_database_is_seeded_with_a_valid_chain_and_vacuumed_on_postgresql(
    database_url: str,
) -> None:
    await seed.large(database_url, subscriptions=30, requests=20, events=300)
    db = Database(database_url, audit_key=seed.AUDIT_KEY.encode())
    try:
        async with db.read() as session:
            counts = [
                await session.scalar(text(f"SELECT count(*) FROM {table}"))
                for table in ("subscriptions", "change_requests", "audit_events")
            ]
            assert counts == [30, 20, 300]
            if not db.is_sqlite:  # analysed and vacuumed, not left to autovacuum during the measurement
                stats = (
                    await session.execute(
                        text(
                            "SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL "
                            "FROM pg_stat_user_tables WHERE relname = 'audit_events'"
                        )
                    )
                ).one()
                assert tuple(stats) == (True, True)
        assert (await audit.verify(db)).ok
    finally:
        await db.dispose()
