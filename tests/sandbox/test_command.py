"""`dpor-bot sandbox`: prints the URL, serves the page, stops cleanly, leaves nothing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

DPOR_BOT = str(Path(sys.executable).with_name("dpor-bot"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    clean["TMPDIR"] = str(tmp_path)  # where the temporary database goes
    return clean


def leftovers(where: Path) -> list[Path]:
    return [*where.glob("dpor-sandbox-*"), *where.glob("*.db")]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_sandbox_prints_its_url_serves_the_page_and_stops_cleanly(
    env: dict[str, str], tmp_path: Path, stop: signal.Signals
) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        DPOR_BOT,
        "sandbox",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        url = f"http://127.0.0.1:{port}/"
        assert first.strip() == f"dpor-bot sandbox: open {url} in a browser", first
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 200 and "dpor-bot sandbox" in await response.text()
            async with http.get(f"{url}sandbox/state") as response:
                state = await response.json()
        assert [p["name"] for p in state["people"]] == [
            "Alex Admin",
            "Olivia Owner",
            "Oscar Owner",
            "Ben Bystander",
        ]
        assert await asyncio.to_thread(leftovers, tmp_path)  # the temporary database, while it runs
        proc.send_signal(stop)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    assert "stopping" in out.decode()
    assert await asyncio.to_thread(leftovers, tmp_path) == []  # a second run starts fresh


async def test_a_port_in_use_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            DPOR_BOT,
            "sandbox",
            "--port",
            str(port),
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert re.match(rf"error: cannot listen on 127\.0\.0\.1:{port} .*--port", lines[0]), lines
    assert await asyncio.to_thread(leftovers, tmp_path) == []
