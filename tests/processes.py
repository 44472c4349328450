"""Subprocesses of the installed `dpor-bot`, shared by every suite that starts one."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import aiohttp

DPOR_BOT = str(Path(sys.executable).with_name("dpor-bot"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    """Run `dpor-bot ARGS...` to its end: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        DPOR_BOT, *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def wait_healthy(url: str, proc: asyncio.subprocess.Process) -> None:
    """Wait until `dpor-bot serve` answers its health check with 200 (or fail if it exits)."""
    async with aiohttp.ClientSession() as session:
        for _ in range(150):
            if proc.returncode is not None:
                raise AssertionError(f"dpor-bot serve exited with {proc.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("dpor-bot serve never became healthy")
