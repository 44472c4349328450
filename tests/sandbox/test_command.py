"""`dpor-bot sandbox`: prints the URL, serves the page, stops cleanly, leaves nothing, and never touches
a database that is not its own."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from bot.directory import SubscriptionRow, grant_role, upsert_subscriptions
from sandbox.database import VARIABLE
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, RoleAssignment
from tests.processes import DPOR_BOT, free_port
from tests.sandbox.tree import text_of

PRODUCTION = SubscriptionRow("33333333-3333-4333-8333-333333333333", "Real Production")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    clean["TMPDIR"] = str(tmp_path)  # where the temporary database goes
    return clean


def leftovers(where: Path) -> list[Path]:
    return [*where.glob("dpor-sandbox-*"), *where.glob("*.db")]


@asynccontextmanager
async def running(env: dict[str, str], cwd: Path, *args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`dpor-bot sandbox ARGS...`, killed on the way out if the test did not stop it."""
    proc = await asyncio.create_subprocess_exec(
        DPOR_BOT,
        "sandbox",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def started(proc: asyncio.subprocess.Process) -> list[str]:
    """The three lines the sandbox prints once it runs."""
    assert proc.stdout is not None
    return [(await asyncio.wait_for(proc.stdout.readline(), 30)).decode().rstrip() for _ in range(3)]


async def stopped(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def command(port: int, text: str, user: str = "U0ADMIN") -> str:
    """Type `text` on the page as `user`; what they see in the approval channel afterwards."""
    body = {"user": user, "channel": "C0APPROVALS", "text": text}
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
        async with http.post("/sandbox/command", json=body) as response:
            assert response.status == 200 and (await response.json())["ok"]
        # since=0: everything this person saw, from the start (a fresh page would show no ephemeral).
        async with http.get("/sandbox/state", params={"user": user, "since": "0"}) as response:
            state = await response.json()
    (channel,) = [c for c in state["channels"] if c["id"] == "C0APPROVALS"]
    return "\n".join(text_of(item["body"]) for item in channel["items"])


async def production(url: str) -> None:
    """What an operator's database holds: a real subscription and a real global owner."""
    db = Database(url)
    try:
        await upsert_subscriptions(db, [PRODUCTION], actor="cli:ops")
        await grant_role(db, "U0REALOWNER", "owner", None, actor="cli:ops")
    finally:
        await db.dispose()


async def snapshot(url: str) -> tuple[list[Any], list[Any], list[Any]]:
    """The audit log, the roles and the requests, to see that nothing was written."""
    db = Database(url)
    try:
        async with db.read() as session:
            events = (await session.execute(select(AuditEvent.seq, AuditEvent.actor, AuditEvent.hash))).all()
            role = RoleAssignment
            roles = (await session.execute(select(role.user_id, role.role, role.scope))).all()
            requests = (await session.execute(select(ChangeRequest.id, ChangeRequest.status))).all()
    finally:
        await db.dispose()
    return sorted(events), sorted(roles), sorted(requests)


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


async def test_DATABASE_URL_is_never_the_sandboxs(
    database_url: str, env: dict[str, str], tmp_path: Path
) -> None:
    await production(database_url)
    before = await snapshot(database_url)
    port = free_port()
    async with running({**env, "DATABASE_URL": database_url}, tmp_path, "--port", str(port)) as proc:
        lines = await started(proc)
        assert "a temporary database, removed on exit" in lines[1], lines
        # (Oscar, not Olivia: she is the last owner of staging-us, and the last owner cannot go.)
        revoked = await command(port, "/dpor role revoke @oscar owner prod-eu", user="U0OWNER1")
        assert "no longer owner of" in revoked  # in the sandbox's own database
        await stopped(proc)
    assert await snapshot(database_url) == before  # no made-up owners, no revoked role, nothing


@pytest.mark.parametrize("given", ["option", "variable"])
async def test_a_database_with_data_not_its_own_is_refused_and_left_alone(
    database_url: str, env: dict[str, str], tmp_path: Path, given: str
) -> None:
    await production(database_url)
    before = await snapshot(database_url)
    port = free_port()
    args = ["--port", str(port)]
    if given == "option":
        args += ["--database-url", database_url]
    else:
        env = {**env, VARIABLE: database_url}
    async with running(env, tmp_path, *args) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert out.decode() == ""
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: refusing the sandbox's database: its audit log begins with an event")
    assert "'cli:ops'" in lines[0] and "not the sandbox's" in lines[0] and "--database-url" in lines[0]
    assert await snapshot(database_url) == before
    with pytest.raises(OSError):  # it never started listening
        await asyncio.open_connection("127.0.0.1", port)


async def test_a_database_of_its_own_is_kept_and_used_again(
    database_url: str, env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, VARIABLE: database_url}
    port = free_port()
    async with running(env, tmp_path, "--port", str(port)) as proc:
        lines = await started(proc)
        assert f"--database-url or {VARIABLE}, kept on exit" in lines[1], lines
        assert "Request #1 is open" in await command(port, "/dpor set prod-eu 4977985 Contoso runs it")
        granted = await command(port, "/dpor role grant @ben admin staging-us", user="U0OWNER1")
        assert "@Ben Bystander is now admin of staging-us" in granted
        await stopped(proc)
    events, roles, requests = await snapshot(database_url)
    assert requests == [(1, "pending")]
    assert ("U0BYSTAND", "admin", "22222222-2222-4222-8222-222222222222") in roles

    async with running(env, tmp_path, "--port", str(port)) as proc:  # the same database, accepted
        await started(proc)
        assert "#1 on Production EU" in await command(port, "/dpor pending", user="U0OWNER1")
        await stopped(proc)
    assert (await snapshot(database_url))[2] == requests
    assert events and not await asyncio.to_thread(lambda: list(tmp_path.glob("dpor-sandbox-*")))

    await production(database_url)  # once somebody else's data is in it, it is refused
    async with running(env, tmp_path, "--port", str(port)) as proc:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and "events by 'cli:ops'" in err.decode(), err.decode()
