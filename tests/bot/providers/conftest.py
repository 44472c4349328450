"""A bot without listeners: the database, the outbox worker with real providers, the Slack stand-in."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, select, update

from bot import clicks, directory, lifecycle, outbox
from bot.app import outbox_worker
from bot.context import BotContext
from bot.policy import Policy
from bot.providers import Providers
from bot.settings import Settings
from bot.worker import OutboxWorker
from sandbox.standin import SlackStandin
from storage.db import Database
from storage.migrate import upgrade
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, Subscription, utcnow
from tests.conftest import _truncate as truncate

TOKEN = "xoxb-provider-tests"
TEAM = "T0DPOR"
APPROVALS, NOTIFY = "C0APPROVALS", "C0NOTIFY"
SUB = "11111111-2222-3333-4444-555555555555"
OTHER = "66666666-7777-8888-9999-000000000000"
OLD, NEW = "1234566", "4977985"
ADMIN, OWNER = "U0ADMIN", "U0OWNER"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite database migrated once per run; each test gets a copy (migrating takes 0.2 s)."""
    path = tmp_path_factory.mktemp("template") / "dpor.db"

    async def migrate() -> None:
        db = Database(f"sqlite+aiosqlite:///{path}")
        await upgrade(db)
        await db.dispose()

    asyncio.run(migrate())
    return path


def _copy(template: Path, directory: Path) -> str:
    target = directory / "dpor.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    return _copy(sqlite_template, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> str:
    """As tests/conftest.py's, with SQLite copied from the template."""
    if request.param == "sqlite":
        return _copy(sqlite_template, tmp_path)
    url = request.getfixturevalue("pg_url")
    asyncio.run(truncate(url))
    return url


@dataclass
class World:
    db: Database
    slack: SlackStandin
    client: AsyncWebClient
    policy: Policy
    settings: Settings
    providers: Providers

    def worker(self, max_attempts: int = 8) -> OutboxWorker:
        ctx = BotContext(settings=self.settings, db=self.db, policy=self.policy)
        return outbox_worker(ctx, self.providers, self.client, max_attempts=max_attempts, poll_interval=0.01)

    async def drive(self, worker: OutboxWorker, within: float = 10.0) -> None:
        """Run the worker until every row due now is delivered and none is in a delivery (rows waiting for
        their backoff wait)."""
        worker.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while loop.time() < deadline:
                async with self.db.read() as session:
                    due = await session.scalar(
                        select(func.count())
                        .select_from(OutboxMessage)
                        .where(
                            OutboxMessage.status == "pending",
                            # due, or in a delivery now (a claimed row is not done until settled)
                            (OutboxMessage.available_at <= utcnow())
                            | (OutboxMessage.claimed_by.is_not(None)),
                        )
                    )
                if not due:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"{due} outbox rows still due after {within}s")
        finally:
            await worker.stop()

    async def apply_row(self, request_id: int) -> OutboxMessage:
        async with self.db.read() as session:
            row = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.kind == outbox.APPLY, OutboxMessage.key == f"apply:{request_id}")
                    .order_by(OutboxMessage.id.desc())
                )
            ).first()
        assert row is not None
        return row

    async def time_passes(self, request_id: int) -> None:
        """The apply row's backoff (or Retry-After) has elapsed."""
        async with self.db.write(serial=False) as session:
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.key == f"apply:{request_id}", OutboxMessage.status == "pending")
                .values(available_at=utcnow())
            )

    async def request(self, request_id: int) -> ChangeRequest:
        async with self.db.read() as session:
            req = await session.get(ChangeRequest, request_id)
        assert req is not None
        return req

    async def subscription(self, subscription_id: str = SUB) -> Subscription:
        async with self.db.read() as session:
            sub = await session.get(Subscription, subscription_id)
        assert sub is not None
        return sub

    async def events(self, action: str | None = None) -> list[AuditEvent]:
        async with self.db.read() as session:
            query = select(AuditEvent).order_by(AuditEvent.seq)
            if action:
                query = query.where(AuditEvent.action == action)
            return list((await session.scalars(query)).all())

    async def approved(self, partner: str = NEW) -> int:
        """A request for `partner` on SUB, approved by an owner: its apply row is due."""
        req = await lifecycle.create_request(
            self.db,
            self.policy,
            team_id=TEAM,
            user_id=ADMIN,
            subscription="prod",
            partner=partner,
            channel_id=APPROVALS,
        )
        await clicks.approve(self.db, self.policy, request_id=req.id, team_id=TEAM, user_id=OWNER)
        return req.id


async def seed(db: Database, provider: str | None = None) -> None:
    await directory.upsert_subscriptions(
        db,
        [
            directory.SubscriptionRow(SUB, "Production EU", "prod", provider),
            directory.SubscriptionRow(OTHER, "Dev", "dev"),
        ],
        actor="test",
    )
    await directory.add_partner(db, OLD, "Fabrikam Consulting", actor="test")
    await directory.add_partner(db, NEW, "Contoso MSP", actor="test")
    await directory.grant_role(db, ADMIN, "admin", None, actor="test")
    await directory.grant_role(db, OWNER, "owner", None, actor="test")


async def make_world(database_url: str, column: str | None = None, **env: Any) -> AsyncIterator[World]:
    """`column` is SUB's own provider (its `subscriptions.provider`); env is the bot's environment."""
    settings = Settings(
        DATABASE_URL=database_url,
        DPOR_APPROVAL_CHANNEL=APPROVALS,
        DPOR_NOTIFY_CHANNELS=NOTIFY,
        DPOR_PROVIDER_TIMEOUT="0.3",
        **env,
    )
    db = Database(database_url)
    async with SlackStandin(bot_token=TOKEN) as slack:
        client = AsyncWebClient(token=TOKEN, base_url=slack.base_url)
        try:
            await seed(db, column)
            yield World(db, slack, client, Policy.from_settings(settings), settings, Providers(settings, db))
        finally:
            await db.dispose()


def when(at: datetime) -> float:
    """Seconds from now until `at`: a wait's upper bound (less of it is left each moment)."""
    return (at - utcnow()).total_seconds()


def since(at: datetime, started: datetime) -> float:
    """Seconds from `started` (taken before the delivery that set `at`) until `at`: a wait's lower bound,
    which a slow moment of the machine between the delivery and the check does not shorten, as it does
    `when` (a loaded CI machine took 0.8 s there)."""
    return (at - started).total_seconds()
