"""Durability harness: `dpor-bot serve` processes that are killed, stopped, restarted and run side by side,
against one Slack stand-in and one database (SQLite, and PostgreSQL when DPOR_TEST_DATABASE_URL is set).

A crash is either `kill -9` from the test at a moment it controls (the stand-in holds a call in flight), or
a crash point (DPOR_TEST_CRASH_AT) that tests/durability/crashpoints loads into the process through
PYTHONPATH, which kills it at a named place in the worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from bot import audit
from sandbox.standin import SlackStandin
from storage.db import Database
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, Subscription
from tests.conftest import AUDIT_KEY
from tests.harness import (
    APPROVALS,
    NOTIFY,
    SECRET,
    TEAM,
    TOKEN,
    seed,
)
from tests.processes import DPOR_BOT, free_port
from tests.slack import SignedSlackClient

CRASH_AT_ENV = "DPOR_TEST_CRASH_AT"
# Loaded by the processes started with a crash point (its sitecustomize installs the points).
CRASH_POINTS = str(Path(__file__).with_name("crashpoints"))
# Short enough that a restarted process takes over a dead one's rows by the time it is up (~1.5 s).
LEASE = "1"


class BotProcess:
    """One `dpor-bot serve`. Its log goes to a file: a pipe nobody reads would fill up and block it."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str, crash_at: str | None) -> None:
        self.env = env
        self.cwd = cwd
        self.name = name
        self.crash_at = crash_at
        self.port = free_port()
        self.log_path = cwd / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def events(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    @property
    def returncode(self) -> int | None:
        assert self.proc is not None
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self) -> None:
        """Start it and wait until healthy. A port another process took between `free_port()` and the bind
        (tests run in parallel) is replaced by a new one, up to three times."""
        for _ in range(3):
            logged = len(self.log())
            try:
                return await self._start()
            except AssertionError:
                if "address already in use" not in self.log()[logged:]:
                    raise
                self.port = free_port()
        await self._start()

    async def _start(self) -> None:
        env = {**self.env, "PORT": str(self.port)}
        if self.crash_at:
            env[CRASH_AT_ENV] = self.crash_at
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [CRASH_POINTS, env.get("PYTHONPATH")]))
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                DPOR_BOT, "serve", env=env, cwd=self.cwd, stdout=log, stderr=log
            )
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                if self.proc.returncode is not None:
                    if self.crash_at and self.proc.returncode == -signal.SIGKILL:
                        return  # its crash point came first (rows left over); the test restarts it
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.port}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} never became healthy:\n{self.log()}")

    async def kill(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def exited(self, within: float = 10.0) -> int:
        """The exit status, once the process ends by itself (a crash point, or after SIGTERM)."""
        assert self.proc is not None
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running after {within}s:\n{self.log()}") from None

    async def logged(self, text: str, within: float = 10.0) -> None:
        for _ in range(int(within / 0.02)):
            if text in self.log():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{self.name} never logged {text!r}:\n{self.log()}")


@dataclass
class Stack:
    """The stand-in, the database, and the bot processes started against them."""

    slack: SlackStandin
    signed: SignedSlackClient
    db: Database
    cwd: Path
    env: dict[str, str]
    bots: list[BotProcess] = field(default_factory=list)

    async def start(self, crash_at: str | None = None, **env: str) -> BotProcess:
        bot = BotProcess({**self.env, **env}, self.cwd, f"bot{len(self.bots) + 1}", crash_at)
        self.bots.append(bot)
        await bot.start()
        return bot

    async def command(self, bot: BotProcess, text: str, user_id: str) -> tuple[int, Any]:
        return await self.signed.command(bot.events, text, user_id, team_id=TEAM, channel_id=APPROVALS)

    async def click(self, bot: BotProcess, action_id: str, request_id: int, user_id: str) -> tuple[int, Any]:
        req = await self.request(request_id)
        return await self.signed.click(
            bot.events,
            action_id,
            str(request_id),
            user_id,
            team_id=TEAM,
            channel_id=APPROVALS,
            message_ts=req.card_ts or "1.000001",
            response_url=self.slack.response_url(f"click-{user_id}", channel=APPROVALS, user=user_id),
        )

    async def request(self, request_id: int) -> ChangeRequest:
        async with self.db.read() as session:
            req = await session.get(ChangeRequest, request_id)
        assert req is not None, f"request {request_id} does not exist"
        return req

    async def partner_of(self, subscription_id: str) -> str | None:
        async with self.db.read() as session:
            sub = await session.get(Subscription, subscription_id)
        assert sub is not None
        return sub.partner_id

    async def outbox(self) -> list[OutboxMessage]:
        async with self.db.read() as session:
            return list((await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())

    async def audit_actions(self) -> Counter[str]:
        async with self.db.read() as session:
            return Counter((await session.scalars(select(AuditEvent.action))).all())

    async def undelivered(self) -> int:
        async with self.db.read() as session:
            return (
                await session.scalar(
                    select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status != "done")
                )
                or 0
            )

    async def until(
        self,
        what: str,
        check: Callable[[], Awaitable[bool]],
        *,
        within: float = 20.0,
        between: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Wait until `check()` holds; `between` runs before each look (e.g. to restart a crashed bot)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if between is not None:
                await between()
            if await check():
                return
            await asyncio.sleep(0.05)
        rows = "\n".join(
            f"  {r.id} {r.kind} {r.key} {r.status} attempts={r.attempts} claimed_by={r.claimed_by} "
            f"error={r.last_error}"
            for r in await self.outbox()
        )
        calls = "\n".join(f"  {c.summary()}" for c in self.slack.calls)
        logs = "\n".join(f"--- {b.name} (crash_at={b.crash_at})\n{b.log()}" for b in self.bots)
        raise AssertionError(f"not {what} after {within}s\noutbox:\n{rows}\nslack calls:\n{calls}\n{logs}")

    async def settled(self, **kw: Any) -> None:
        """Every outbox row done: delivered, or covered by a later card render."""

        async def done() -> bool:
            return await self.undelivered() == 0

        await self.until("every outbox row delivered", done, **kw)

    def card_messages(self) -> list[Any]:
        """Top-level messages in the approval channel (replies in a card's thread are reminders)."""
        return [m for m in self.slack.messages(APPROVALS) if m.thread_ts is None]

    def texts(self, channel: str) -> list[str]:
        return [m.text for m in self.slack.messages(channel)]

    async def card_shows(self, request_id: int, words: str) -> bool:
        req = await self.request(request_id)
        if req.card_ts is None:
            return False
        return words in json.dumps(self.slack.message(APPROVALS, req.card_ts).blocks)

    async def verify_audit(self) -> None:
        result = await audit.verify(self.db)
        assert result.ok, f"audit chain broken at {result.broken_seq}: {result.problem}"


@pytest.fixture
async def stack(database_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    db = Database(database_url)
    await seed(db)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "DPOR_", "DATABASE_URL"))}
    async with SlackStandin(bot_token=TOKEN) as slack, SignedSlackClient(SECRET) as signed:
        env = {
            **base,
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.base_url,
            "DATABASE_URL": database_url,
            "DPOR_AUDIT_KEY": AUDIT_KEY,  # the key this test's own writes (the seed) used
            "DPOR_APPROVAL_CHANNEL": APPROVALS,
            "DPOR_NOTIFY_CHANNELS": NOTIFY,
            "DPOR_OUTBOX_POLL_INTERVAL": "0.05",
            "DPOR_OUTBOX_LEASE": LEASE,
            # One row at a time: a crash point then interrupts only its own row's delivery, never
            # another's at the moment Slack accepted it, so "once" can be asserted exactly.
            "DPOR_OUTBOX_CONCURRENCY": "1",
        }
        stack = Stack(slack, signed, db, tmp_path, env)
        try:
            yield stack
        finally:
            for bot in stack.bots:
                if bot.proc is not None:
                    await bot.kill()
            for method in ("chat.postMessage", "chat.update", "chat.postEphemeral", "conversations.open"):
                slack.release(method, drop=True)
            await db.dispose()
