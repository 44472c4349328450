"""Two `dpor-bot serve` processes on one PostgreSQL database: does the second add throughput or take it?

Each process gets half of wrk's connections and its own half of the subscriptions (`set`) or of the
pending requests (Approve), at the same time; their requests per second add up. The ratio to one
process (16 connections) is what scaling out buys on this machine; the issue's target is >= 1.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from bench import latency, seed
from bench.load import CONNECTIONS, Result, write_requests, wrk
from sandbox.standin import SlackStandin

HALF = CONNECTIONS // 2


def _combined(target: str, workload: str, halves: list[Result]) -> Result:
    requests = sum(r.requests for r in halves)
    cpu_ms = None  # both processes' CPU over both processes' requests
    if requests and all(r.cpu_ms is not None for r in halves):
        cpu_ms = round(sum((r.cpu_ms or 0.0) * r.requests for r in halves) / requests, 2)
    return Result(
        cpu_ms=cpu_ms,
        target=target,
        workload=workload,
        requests_per_s=round(sum(r.requests_per_s for r in halves), 1),
        p50_ms=max(r.p50_ms for r in halves),
        p99_ms=max(r.p99_ms for r in halves),
        max_ms=max(r.max_ms for r in halves),
        requests=requests,
        errors=sum(r.errors for r in halves),
        error_detail=[line for r in halves for line in r.error_detail],
    )


async def measure(
    slack: SlackStandin, database_url: str, work: Path, seconds: int, label: str
) -> list[Result]:
    """`set` then Approve, each process loaded by its own wrk at once; one combined Result per workload."""
    from bench.run import serve  # the same `serve` as the one-process run

    async with contextlib.AsyncExitStack() as stack:
        served = [
            await stack.enter_async_context(serve(slack, database_url, work / f"{label}-{n}.log"))
            for n in (1, 2)
        ]
        ports = [port for port, _ in served]
        pids = [proc.pid for _, proc in served]
        subs = await seed.open_subscriptions(database_url, limit=20_000)
        set_files = []
        for n, part in enumerate((subs[0::2], subs[1::2])):
            file = work / f"pair-set-{n}.txt"
            write_requests(file, seed.set_bodies(part))
            set_files.append(file)
        length = max(2, seconds // 2)
        halves = await asyncio.gather(
            *(
                wrk(port, file, "Request #", length, label, "set", once=True, connections=HALF, pid=pid)
                for port, pid, file in zip(ports, pids, set_files, strict=True)
            )
        )
        results = [_combined(label, "set", list(halves))]

        pending = await seed.pending_request_ids(database_url)
        approve_files = []
        for n, part in enumerate((pending[0::2], pending[1::2])):
            file = work / f"pair-approve-{n}.txt"
            write_requests(file, seed.approve_bodies(part, latency.APPROVALS))
            approve_files.append(file)
        halves = await asyncio.gather(
            *(
                wrk(port, file, "", length, label, "Approve", once=True, connections=HALF, pid=pid)
                for port, pid, file in zip(ports, pids, approve_files, strict=True)
            )
        )
        results.append(_combined(label, "Approve", list(halves)))
    return results
