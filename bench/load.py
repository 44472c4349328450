"""The load side of the benchmark: wrk runs of pre-signed Slack requests, processes, databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bot.settings import normalise_database_url
from sandbox.signing import sign

HERE = Path(__file__).parent
SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
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
    ratio_to_floor: float | None = None
    # CPU time of the loaded process per request, ms: from the run's start until the process is idle again,
    # so a bot's deliveries that follow its answers count too (None: not measured)
    cpu_ms: float | None = None
    # what the errors were: socket errors by kind, and the first failed answer of each wrk thread
    error_detail: list[str] = field(default_factory=list)


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


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (Linux: /proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


QUIET_S, QUIET_SHARE, IDLE_WITHIN_S = 0.5, 0.02, 30.0


async def idle_cpu_seconds(pid: int) -> float:
    """The process's CPU time once it has gone idle (under 2% of a core for half a second), waiting up to
    30 s: what a run cost includes the work it queued (a bot's deliveries after its answers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_WITHIN_S
    before = cpu_seconds(pid)
    while True:
        await asyncio.sleep(QUIET_S)
        now = cpu_seconds(pid)
        if now - before <= QUIET_S * QUIET_SHARE or loop.time() > deadline:
            return now
        before = now


async def wrk(
    port: int,
    requests_file: Path,
    marker: str,
    seconds: int,
    target: str,
    workload: str,
    *,
    once: bool = False,
    connections: int = CONNECTIONS,
    pid: int | None = None,
) -> Result:
    """wrk for `seconds` with the signed requests of the file; `once`: stop when each was sent once.
    `pid`: the loaded process, whose CPU time per request is measured (`Result.cpu_ms`)."""
    started_cpu = cpu_seconds(pid) if pid is not None else None
    proc = await asyncio.create_subprocess_exec(
        "wrk",
        f"-t{THREADS}",
        f"-c{connections}",
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
        "once" if once else "cycle",
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
    detail = re.findall(r"DPOR_BENCH_FAILURE (.*)", text)
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
        detail.insert(0, socket_errors.group(0))
    if non_2xx and not int(fields["failures"]):
        errors += int(non_2xx.group(1))
    cpu_ms = None
    if pid is not None and started_cpu is not None and requests:
        cpu_ms = round((await idle_cpu_seconds(pid) - started_cpu) * 1000 / requests, 2)
    return Result(
        target=target,
        workload=workload,
        cpu_ms=cpu_ms,
        requests_per_s=round(requests / (int(fields["duration_us"]) / 1e6), 1),
        p50_ms=round(int(fields["p50_us"]) / 1000, 2),
        p99_ms=round(int(fields["p99_us"]) / 1000, 2),
        max_ms=round(int(fields["max_us"]) / 1000, 2),
        requests=requests,
        errors=errors,
        error_detail=detail,
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
async def process(
    args: list[str], port: int, env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("w") as out:
        proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            await wait_healthy(port, proc)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


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
