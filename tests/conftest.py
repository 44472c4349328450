"""Shared fixtures: a fresh, migrated database per test on SQLite, and on PostgreSQL when configured.

CI sets DPOR_TEST_DATABASE_URL (postgresql://postgres@127.0.0.1:5432/test). The server outlives a
run, so each run creates a database of its own with a unique name and drops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from bot.settings import normalise_database_url
from storage.db import Database
from storage.migrate import upgrade
from tests.harness import Harness, start_harness

PG_ADMIN_URL = os.environ.get("DPOR_TEST_DATABASE_URL", "").strip()
TABLES = (
    "managed_assignments",
    "partner_principals",
    "people",
    "approvals",
    "change_requests",
    "audit_events",
    "audit_pending",
    "outbox",
    "channel_watches",
    "role_assignments",
    "partners",
    "subscriptions",
    "seen_requests",
    "audit_checkpoints",
)
# The audit key of every test (DPOR_AUDIT_KEY): the bot's, the CLI's, and that of any Database a test opens.
AUDIT_KEY = "tests-audit-key-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def audit_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every process and database of a test shares one audit key; tests of the key itself undo this."""
    monkeypatch.setenv("DPOR_AUDIT_KEY", AUDIT_KEY)
    monkeypatch.setattr(Database, "audit_key", AUDIT_KEY.encode())
    return AUDIT_KEY


def _asyncpg_dsn(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, parts.query, parts.fragment))


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated once; dropped when the run ends."""
    if not PG_ADMIN_URL:
        pytest.skip("PostgreSQL tests need DPOR_TEST_DATABASE_URL")
    name = f"dpor_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(PG_ADMIN_URL)
    url = normalise_database_url(urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")))

    async def migrate() -> None:
        db = Database(url)
        await upgrade(db)
        await db.dispose()

    asyncio.run(migrate())
    try:
        yield url
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    db = Database(url)
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    await db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """The URL of an empty, migrated database (SQLite file per test; PostgreSQL truncated per test)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'dpor.db'}"

        async def migrate() -> None:
            db = Database(url)
            await upgrade(db)
            await db.dispose()

        asyncio.run(migrate())
        yield url
    else:
        url = request.getfixturevalue("pg_url")
        asyncio.run(_truncate(url))
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """An empty, migrated SQLite database, for tests that are about the bot rather than the engine."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'dpor.db'}"

    async def migrate() -> None:
        db = Database(url)
        await upgrade(db)
        await db.dispose()

    asyncio.run(migrate())
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


# The real app over HTTP (tests/harness.py), for every suite that drives it.


@pytest.fixture
def bot_env() -> dict[str, Any]:
    """Extra environment for the bot under test; override in a module or with indirect parametrisation."""
    return {}


@pytest.fixture
async def harness(sqlite_url: str, bot_env: dict[str, Any]) -> AsyncIterator[Harness]:
    async for h in start_harness(sqlite_url, **bot_env):
        yield h


@pytest.fixture
async def harness_any_db(database_url: str, bot_env: dict[str, Any]) -> AsyncIterator[Harness]:
    async for h in start_harness(database_url, **bot_env):
        yield h
