"""Subprocesses of the installed `dpor-bot`, shared by every suite that starts one."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from storage.db import Database
from storage.models import ChangeRequest
from tests.conftest import AUDIT_KEY

DPOR_BOT = str(Path(sys.executable).with_name("dpor-bot"))
# The checkout under test: subprocesses import its code, whichever checkout runs the tests.
REPO = Path(__file__).resolve().parents[1]


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


# The CLI in a subprocess (`python -m bot.cli`), and the database it works on.


def clean_env(database_url: str | None, **extra: str) -> dict[str, str]:
    """The test runner's environment without any bot setting, plus the ones a test names."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DPOR_", "SLACK_")) and key not in ("DATABASE_URL", "PORT")
    }
    env["PYTHONPATH"] = str(REPO)  # the code under test, whichever checkout runs the tests
    env["DPOR_AUDIT_KEY"] = AUDIT_KEY  # the key of the databases the tests open themselves
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def dpor_bot(
    *args: str, url: str | None, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        cwd=cwd,
        env=clean_env(url, **(env or {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 1 with exactly one `error:` line on stderr and no traceback; returns that line."""
    assert result.returncode == 1, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    )
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\nstderr: {result.stderr}"
    assert "Usage: dpor-bot" in result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def table_rows(stdout: str) -> list[list[str]]:
    """The data rows of a CLI table, split into columns (the header row dropped)."""
    return [line.split() for line in stdout.strip().splitlines()[1:]]


def query(url: str, statement: Any) -> list[Any]:
    async def go() -> list[Any]:
        db = Database(url)
        try:
            async with db.read() as session:
                return list((await session.execute(statement)).all())
        finally:
            await db.dispose()

    return asyncio.run(go())


def change(url: str, *statements_or_rows: Any) -> None:
    async def go() -> None:
        db = Database(url)
        try:
            async with db.write(serial=False) as session:
                for item in statements_or_rows:
                    if isinstance(item, ChangeRequest):
                        session.add(item)
                    else:
                        await session.execute(item)
        finally:
            await db.dispose()

    asyncio.run(go())
