"""Benchmark: dpor-bot against a bare Bolt app on this machine, loaded by wrk with signed Slack requests.

    python -m bench.run [--database-url postgresql://postgres@127.0.0.1:5432/test] [--scale] [--json out.json]

Starts the Slack stand-in, the anchor (bench/anchor.py: a Bolt AsyncApp whose /dpor listener only
acks), Bolt's floor (the same anchor with process_before_response=True, as dpor-bot runs) and
`dpor-bot serve`, then runs each workload with wrk (16 connections, 2 threads) and prints requests/s,
p50/p99 ack latency, errors and the ratios to the anchor and to the floor. Before the load it measures,
one request at a time, `set` -> card posted and Approve -> card Applied (bench/latency.py), and the
resident memory of `dpor-bot serve` idle, after the load and at its peak. With --scale it also measures
`show` and `set` against a database holding 1,000,000 audit events, 100,000 subscriptions and
100,000 requests, and prints the ratio to the small database. On PostgreSQL it also runs `set` and
Approve against two `dpor-bot serve` processes sharing one database (bench/pair.py) and prints their
combined requests/s and the ratio to one process. A PostgreSQL URL names a server: the
benchmark creates a database of its own there and drops it afterwards. The output is Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import latency, pair, seed
from bench import report as report_module
from bench.load import (
    CONNECTIONS,
    HERE,
    SECRET,
    THREADS,
    TOKEN,
    Result,
    database,
    free_port,
    process,
    write_requests,
    wrk,
)
from sandbox.signing import slash_command_body
from sandbox.standin import SlackStandin

TEAM = seed.TEAM


@dataclass
class BotRun:
    results: list[Result]
    light: list[latency.Latency]
    memory: latency.Memory


# Enough distinct `show` requests that wrk never sends one twice in a run (each is accepted once).
SHOW_REQUESTS = 30_000


def show_bodies(refs: list[str], user: str, count: int = SHOW_REQUESTS) -> Iterable[str]:
    for i in range(count):
        yield slash_command_body(f"show {refs[i % len(refs)]}", user_id=user, team_id=TEAM)


def bot_env(slack: SlackStandin, database_url: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_"))},
        "PYTHONPATH": str(HERE.parent),  # this checkout's code, as tests/processes.py does
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "DATABASE_URL": database_url,
        "DPOR_AUDIT_KEY": seed.AUDIT_KEY,
        "DPOR_PROVIDER": "ledger",
        "DPOR_APPROVAL_CHANNEL": latency.APPROVALS,
        "DPOR_NOTIFY_CHANNELS": "C0NOTIFY",
    }


@contextlib.asynccontextmanager
async def serve(
    slack: SlackStandin, database_url: str, log: Path
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    """`dpor-bot serve` on a free port against the stand-in: yields (port, process) once healthy."""
    port = free_port()
    dpor_bot = str(Path(sys.executable).with_name("dpor-bot"))
    async with process(
        [dpor_bot, "serve", "--port", str(port)], port, bot_env(slack, database_url), log
    ) as proc:
        yield port, proc


IDLE_S = 1.0  # after /healthz answers, before idle memory is read


async def measure_bot(
    slack: SlackStandin,
    database_url: str,
    work: Path,
    seconds: int,
    label: str,
    *,
    clicks: bool = True,
    light: int = 0,
) -> BotRun:
    results = []
    light_results: list[latency.Latency] = []
    async with serve(slack, database_url, work / f"{label}.log") as (port, proc):
        await asyncio.sleep(IDLE_S)
        memory = latency.Memory(idle_mb=latency.rss_mb(proc.pid))
        used: set[str] = set()
        if light:
            subs = await seed.open_subscriptions(database_url, limit=light)
            light_results = await latency.light_load(slack, port, SECRET, subs, light)
            used.update(subs)  # their partner is NEW_PARTNER now: `set` to it again is refused

        subs = [s for s in await seed.open_subscriptions(database_url, limit=20_000) if s not in used]
        file = work / "show.txt"
        write_requests(file, show_bodies(subs[:1000], seed.BYSTANDER))
        results.append(
            await wrk(port, file, "Partner of record", seconds, label, "show", once=True, pid=proc.pid)
        )

        file = work / "set.txt"
        write_requests(file, seed.set_bodies(subs))
        results.append(
            await wrk(port, file, "Request #", max(2, seconds // 2), label, "set", once=True, pid=proc.pid)
        )

        pending = await seed.pending_request_ids(database_url) if clicks else []
        if pending:
            file = work / "approve.txt"
            write_requests(file, seed.approve_bodies(pending, latency.APPROVALS))
            results.append(
                await wrk(port, file, "", max(2, seconds // 2), label, "Approve", once=True, pid=proc.pid)
            )
        memory.after_load_mb = latency.rss_mb(proc.pid)
        memory.peak_mb = latency.peak_mb(proc.pid)
    return BotRun(results, light_results, memory)


async def measure_anchor(
    slack: SlackStandin, work: Path, seconds: int, *, before_response: bool
) -> tuple[Result, latency.Memory]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "bench.anchor",
        "--port",
        str(port),
        "--signing-secret",
        SECRET,
        "--token",
        TOKEN,
        "--api-url",
        slack.base_url,
    ]
    label = FLOOR if before_response else ANCHOR
    if before_response:
        args.append("--process-before-response")
    async with process(args, port, dict(os.environ), work / "anchor.log") as proc:
        await asyncio.sleep(IDLE_S)
        memory = latency.Memory(idle_mb=latency.rss_mb(proc.pid))
        file = work / "anchor.txt"
        write_requests(file, show_bodies([seed.PROD_ALIAS] * 1000, seed.BYSTANDER))
        result = await wrk(port, file, "", seconds, label, "show", pid=proc.pid)
        memory.after_load_mb = latency.rss_mb(proc.pid)
        memory.peak_mb = latency.peak_mb(proc.pid)
        return result, memory


ANCHOR = "anchor (Bolt, acks only)"
FLOOR = "Bolt's floor (process_before_response)"


def explain_errors(results: list[Result]) -> None:
    """On stderr (the tables stay clean): what the errors of each run were."""
    for r in results:
        for line in r.error_detail:
            print(f"errors of {r.target} {r.workload}: {line}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    engine = "postgresql" if args.database_url else "sqlite"
    bot_label = f"dpor-bot ({engine})"
    with tempfile.TemporaryDirectory(prefix="dpor-bench-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        async with SlackStandin(bot_token=TOKEN) as slack:
            anchor, anchor_memory = await measure_anchor(slack, work, args.seconds, before_response=False)
            floor, floor_memory = await measure_anchor(slack, work, args.seconds, before_response=True)
            floor.ratio_to_anchor = round(floor.requests_per_s / anchor.requests_per_s, 2)
            async with database(args.database_url, work, "small") as url:
                await seed.small(url, subscriptions=args.subscriptions)
                small = await measure_bot(slack, url, work, args.seconds, bot_label, light=args.light)
            for r in small.results:
                r.ratio_to_anchor = round(r.requests_per_s / anchor.requests_per_s, 2)
                r.ratio_to_floor = round(r.requests_per_s / floor.requests_per_s, 2)
            results = [anchor, floor, *small.results]
            memories = [
                (ANCHOR, anchor_memory),
                (FLOOR, floor_memory),
                (f"`dpor-bot serve` ({engine})", small.memory),
            ]
            report: dict = {
                "engine": engine,
                "seconds": args.seconds,
                "connections": CONNECTIONS,
                "threads": THREADS,
                "subscriptions": args.subscriptions,
                "results": [asdict(r) for r in results],
                "light_load": [asdict(r) for r in small.light],
                "memory": {name: asdict(m) for name, m in memories},
            }
            print(f"### {engine}: wrk, {CONNECTIONS} connections, {THREADS} threads\n", flush=True)
            print(report_module.throughput(results) + "\n", flush=True)
            explain_errors(results)
            if small.light:
                print(report_module.latencies(bot_label, small.light) + "\n", flush=True)
            print(report_module.memory(memories) + "\n", flush=True)

            if engine == "postgresql":
                async with database(args.database_url, work, "pair") as url:
                    await seed.small(url, subscriptions=args.subscriptions)
                    two = await pair.measure(slack, url, work, args.seconds, f"{bot_label}, two processes")
                scaling = []
                for r in two:
                    one = next(s for s in small.results if s.workload == r.workload)
                    r.ratio_to_anchor = round(r.requests_per_s / anchor.requests_per_s, 2)
                    r.ratio_to_floor = round(r.requests_per_s / floor.requests_per_s, 2)
                    ratio = round(r.requests_per_s / one.requests_per_s, 2)
                    scaling.append({"workload": r.workload, "ratio_to_one_process": ratio})
                report["two_processes"] = [asdict(r) for r in two]
                report["two_processes_scaling"] = scaling
                print(report_module.throughput(two) + "\n", flush=True)
                explain_errors(two)
                for row in scaling:
                    print(
                        f"two processes, {row['workload']}: x{row['ratio_to_one_process']} of one process's "
                        "requests/s (target >= 1)\n",
                        flush=True,
                    )

            if args.scale:
                async with database(args.database_url, work, "large") as url:
                    started = time.monotonic()
                    await seed.large(url)
                    print(f"seeded the large database in {time.monotonic() - started:.0f} s\n", flush=True)
                    large = await measure_bot(
                        slack, url, work, args.seconds, f"dpor-bot ({engine}, large)", clicks=False
                    )
                    lists = await seed.list_sizes(url)
                for r in large.results:
                    r.ratio_to_anchor = round(r.requests_per_s / anchor.requests_per_s, 2)
                    r.ratio_to_floor = round(r.requests_per_s / floor.requests_per_s, 2)
                scale = []
                for r in large.results:
                    base = next(s for s in small.results if s.workload == r.workload)
                    scale.append(
                        {
                            "workload": r.workload,
                            "p50_ratio": round(r.p50_ms / base.p50_ms, 2),
                            "p99_ratio": round(r.p99_ms / base.p99_ms, 2),
                            "throughput_ratio": round(base.requests_per_s / r.requests_per_s, 2),
                        }
                    )
                report["large"] = [asdict(r) for r in large.results]
                report["large_memory"] = asdict(large.memory)
                report["scale"] = scale
                report["lists"] = lists
                print(report_module.throughput(large.results) + "\n")
                explain_errors(large.results)
                print(report_module.scale(scale) + "\n")
                for row in scale:
                    print(
                        f"scale {row['workload']}: p50 x{row['p50_ratio']}, p99 x{row['p99_ratio']}, "
                        f"throughput x{row['throughput_ratio']} (large / small; target <= 1.5)"
                    )
                print("\n" + report_module.memory([(f"`dpor-bot serve` ({engine}, large)", large.memory)]))
                print("\n" + report_module.lists(lists))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL server URL (default: SQLite files in a temp dir)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="length of the show runs (set/approve: half)")
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument(
        "--light",
        type=int,
        default=50,
        help="requests of each light-load measurement, one at a time (0: skip them)",
    )
    parser.add_argument("--scale", action="store_true", help="also measure against a large database")
    parser.add_argument(
        "--with-fast-anchor", action="store_true", help=argparse.SUPPRESS
    )  # Bolt's floor is always measured now; the flag stays accepted for old command lines
    parser.add_argument("--json", help="write the results to this file too")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the processes' logs and wrk's request files in DIR"
    )
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
