"""Benchmark: dpor-bot against a bare Bolt app on this machine, loaded by wrk with signed Slack requests.

    python -m bench.run [--database-url postgresql://postgres@127.0.0.1:5432/test] [--scale] [--json out.json]

Starts the Slack stand-in, the anchor (bench/anchor.py: a Bolt AsyncApp whose /dpor listener only
acks) and `dpor-bot serve`, then runs each workload with wrk (16 connections, 2 threads) and prints
requests/s, p50/p99 ack latency, errors and the ratio to the anchor. With --scale it also measures
`show` and `set` against a database holding 1,000,000 audit events, 100,000 subscriptions and
100,000 requests, and prints the ratio to the small database. A PostgreSQL URL names a server: the
benchmark creates a database of its own there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench import seed
from bot.settings import normalise_database_url
from sandbox.signing import block_actions_body, sign, slash_command_body
from sandbox.standin import SlackStandin

HERE = Path(__file__).parent
SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
TEAM = seed.TEAM
CONNECTIONS, THREADS = 16, 2


@dataclass
class Result:
    target: str
    workload: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    ratio_to_anchor: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_requests(path: Path, bodies: Iterable[str]) -> int:
    """Sign every body now (Slack refuses signatures older than five minutes) and write one per line.

    Each body gets a field of its own, so no two requests share a signature: the bot accepts a signature
    once (its replay defence) and would refuse a request the file repeats.
    """
    count = 0
    with path.open("w") as out:
        for body in bodies:
            body = f"{body}&bench_request={count}"
            headers = sign(SECRET, body)
            out.write(f"{headers['X-Slack-Request-Timestamp']}\t{headers['X-Slack-Signature']}\t{body}\n")
            count += 1
    return count


async def wrk(
    port: int, requests_file: Path, marker: str, seconds: int, target: str, workload: str
) -> Result:
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "signed.lua"),
        f"http://127.0.0.1:{port}",
        "--",
        str(requests_file),
        marker,
        str(THREADS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    text = out.decode()
    match = re.search(r"DPOR_BENCH (.*)", text)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed: {text}\n{err.decode()}")
    fields = dict(pair.split("=") for pair in match.group(1).split())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    requests = int(fields["requests"])
    errors = int(fields["failures"])
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    if non_2xx and not int(fields["failures"]):
        errors += int(non_2xx.group(1))
    return Result(
        target=target,
        workload=workload,
        requests_per_s=round(requests / (int(fields["duration_us"]) / 1e6), 1),
        p50_ms=round(int(fields["p50_us"]) / 1000, 2),
        p99_ms=round(int(fields["p99_us"]) / 1000, 2),
        max_ms=round(int(fields["max_us"]) / 1000, 2),
        requests=requests,
        errors=errors,
    )


async def wait_healthy(port: int, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if proc.returncode is not None:
                raise RuntimeError(f"process on port {port} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing healthy on port {port}")


@contextlib.asynccontextmanager
async def process(args: list[str], port: int, env: dict[str, str], log: Path) -> AsyncIterator[None]:
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            await wait_healthy(port, proc)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# Enough distinct `show` requests that wrk never sends one twice in a run (each is accepted once).
SHOW_REQUESTS = 30_000


def show_bodies(refs: list[str], user: str, count: int = SHOW_REQUESTS) -> Iterable[str]:
    for i in range(count):
        yield slash_command_body(f"show {refs[i % len(refs)]}", user_id=user, team_id=TEAM)


async def measure_bot(
    slack: SlackStandin, database_url: str, work: Path, seconds: int, label: str, *, clicks: bool = True
) -> list[Result]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_"))},
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.base_url,
        "DATABASE_URL": database_url,
        "DPOR_AUDIT_KEY": seed.AUDIT_KEY,
        "DPOR_APPROVAL_CHANNEL": "C0APPROVALS",
        "DPOR_NOTIFY_CHANNELS": "C0NOTIFY",
    }
    dpor_bot = str(Path(sys.executable).with_name("dpor-bot"))
    results = []
    async with process([dpor_bot, "serve", "--port", str(port)], port, env, work / f"{label}.log"):
        subs = await seed.open_subscriptions(database_url, limit=20_000)
        file = work / "show.txt"
        write_requests(file, show_bodies(subs[:1000], seed.BYSTANDER))
        results.append(await wrk(port, file, "Partner of record", seconds, label, "show"))

        file = work / "set.txt"
        write_requests(
            file,
            (
                slash_command_body(f"set {sub} {seed.NEW_PARTNER} bench", user_id=seed.ADMIN, team_id=TEAM)
                for sub in subs
            ),
        )
        results.append(await wrk(port, file, "Request #", max(2, seconds // 2), label, "set"))

        if clicks:
            pending = await seed.pending_request_ids(database_url)
            file = work / "approve.txt"
            write_requests(
                file,
                (
                    block_actions_body(
                        "dpor_approve",
                        str(rid),
                        user_id=seed.OWNER,
                        team_id=TEAM,
                        channel_id="C0APPROVALS",
                        message_ts="1.000001",
                    )
                    for rid in pending
                ),
            )
            results.append(await wrk(port, file, "", max(2, seconds // 2), label, "approve"))
    return results


async def measure_anchor(slack: SlackStandin, work: Path, seconds: int, *, before_response: bool) -> Result:
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
    label = "anchor (process_before_response)" if before_response else "anchor"
    if before_response:
        args.append("--process-before-response")
    async with process(args, port, dict(os.environ), work / "anchor.log"):
        file = work / "anchor.txt"
        write_requests(file, show_bodies([seed.PROD_ALIAS] * 1000, seed.BYSTANDER))
        return await wrk(port, file, "", seconds, label, "show")


@contextlib.asynccontextmanager
async def database(url: str | None, work: Path, name: str) -> AsyncIterator[str]:
    """A fresh, migrated database: an SQLite file in `work`, or a new database on the PostgreSQL server."""
    if not url:
        yield normalise_database_url(f"sqlite:///{work / f'{name}.db'}")
        return
    import asyncpg

    parts = urlsplit(url)
    admin = urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))
    db_name = f"dpor_bench_{name}_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{db_name}"')
    await conn.close()
    try:
        yield normalise_database_url(urlunsplit((parts.scheme, parts.netloc, f"/{db_name}", "", "")))
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        await conn.close()


def table(results: list[Result]) -> str:
    head = (
        f"{'target':<34} {'workload':<9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'x anchor':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = f"{r.ratio_to_anchor:.2f}" if r.ratio_to_anchor is not None else "-"
        lines.append(
            f"{r.target:<34} {r.workload:<9} {r.requests_per_s:>8.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} "
            f"{r.errors:>7} {ratio:>9}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    engine = "postgresql" if args.database_url else "sqlite"
    with tempfile.TemporaryDirectory(prefix="dpor-bench-") as tmp:
        work = Path(tmp)
        async with SlackStandin(bot_token=TOKEN) as slack:
            anchor = await measure_anchor(slack, work, args.seconds, before_response=False)
            results = [anchor]
            if args.with_fast_anchor:
                results.append(await measure_anchor(slack, work, args.seconds, before_response=True))
            async with database(args.database_url, work, "small") as url:
                await seed.small(url, subscriptions=args.subscriptions)
                small = await measure_bot(slack, url, work, args.seconds, f"dpor-bot ({engine})")
            results.extend(small)
            for r in results[1:]:
                r.ratio_to_anchor = round(r.requests_per_s / anchor.requests_per_s, 2)
            report: dict = {"engine": engine, "results": [asdict(r) for r in results]}
            print(table(results), flush=True)

            if args.scale:
                async with database(args.database_url, work, "large") as url:
                    started = time.monotonic()
                    await seed.large(url)
                    print(f"seeded the large database in {time.monotonic() - started:.0f} s", flush=True)
                    large = await measure_bot(
                        slack, url, work, args.seconds, f"dpor-bot ({engine}, large)", clicks=False
                    )
                    lists = await seed.list_sizes(url)
                scale = []
                for r in large:
                    base = next(s for s in small if s.workload == r.workload)
                    scale.append(
                        {
                            "workload": r.workload,
                            "p50_ratio": round(r.p50_ms / base.p50_ms, 2),
                            "p99_ratio": round(r.p99_ms / base.p99_ms, 2),
                            "throughput_ratio": round(base.requests_per_s / r.requests_per_s, 2),
                        }
                    )
                report["large"] = [asdict(r) for r in large]
                report["scale"] = scale
                report["lists"] = lists
                print(table(large))
                for row in scale:
                    print(
                        f"scale {row['workload']}: p50 x{row['p50_ratio']}, p99 x{row['p99_ratio']}, "
                        f"throughput x{row['throughput_ratio']} (large / small; target <= 1.5)"
                    )
                for name, info in lists.items():
                    print(f"{name}: {info}")
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
    parser.add_argument("--scale", action="store_true", help="also measure against a large database")
    parser.add_argument(
        "--with-fast-anchor",
        action="store_true",
        help="also measure the anchor with process_before_response=True",
    )
    parser.add_argument("--json", help="write the results to this file too")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
