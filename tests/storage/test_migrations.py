"""Migrations: `upgrade` builds the whole schema on an empty database, on both engines, and is repeatable."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from bot.settings import normalise_database_url
from storage.db import Database
from storage.migrate import MigrationError, is_current, upgrade
from storage.models import Base

PG_ADMIN_URL = os.environ.get("DPOR_TEST_DATABASE_URL", "").strip()


async def _pg_admin(sql: str) -> None:
    import asyncpg

    parts = urlsplit(PG_ADMIN_URL)
    conn = await asyncpg.connect(urlunsplit(("postgresql", parts.netloc, parts.path, "", "")))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_db(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Database]:
    """A database with no tables at all: a new SQLite file, or a throwaway PostgreSQL database."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
        yield db
        await db.dispose()
        return
    if not PG_ADMIN_URL:
        pytest.skip("PostgreSQL tests need DPOR_TEST_DATABASE_URL")
    name = f"dpor_migrate_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    parts = urlsplit(PG_ADMIN_URL)
    db = Database(normalise_database_url(urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))))
    try:
        yield db
    finally:
        await db.dispose()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def table_names(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def schema_differences(db: Database) -> list[object]:
    def compare(connection: Connection) -> list[object]:
        return compare_metadata(MigrationContext.configure(connection), Base.metadata)

    async with db.engine.connect() as conn:
        return await conn.run_sync(compare)


async def test_upgrade_creates_every_table(empty_db: Database) -> None:
    assert await table_names(empty_db) == set()
    assert await is_current(empty_db) is False
    await upgrade(empty_db)
    assert await table_names(empty_db) == {*Base.metadata.tables, "alembic_version"}
    assert await is_current(empty_db) is True


async def test_the_migrations_match_the_models(empty_db: Database) -> None:
    await upgrade(empty_db)
    assert await schema_differences(empty_db) == []


async def test_upgrade_twice_is_harmless(empty_db: Database) -> None:
    await upgrade(empty_db)
    await upgrade(empty_db)
    assert await is_current(empty_db) is True
    assert await table_names(empty_db) == {*Base.metadata.tables, "alembic_version"}


def test_head_constant_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from storage.migrate import HEAD, alembic_config

    assert ScriptDirectory.from_config(alembic_config()).get_heads() == [HEAD]


async def test_the_upgrade_that_signs_pending_events_waits_until_none_waits(empty_db: Database) -> None:
    """Events waiting for the sealer when 0009 comes carry no signature and could not be told from forged
    ones: the upgrade refuses, saying how to have them chained first, and goes through once none waits."""
    await upgrade(empty_db, "0008")
    async with empty_db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_pending (at, actor, action, data) "
                "VALUES (CURRENT_TIMESTAMP, 'U1', 'partner.added', '{}')"
            )
        )
    with pytest.raises(MigrationError, match="dpor-bot audit verify"):
        await upgrade(empty_db)
    assert not await is_current(empty_db)
    async with empty_db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_pending"))
    await upgrade(empty_db)
    assert await is_current(empty_db)


async def test_an_event_committed_during_the_upgrade_is_counted_not_slipped_past(
    empty_db: Database,
) -> None:
    """PostgreSQL, a deploy: the running version's transaction has written an event and not committed when
    0009 starts. The upgrade waits for it and counts it (refusing), rather than counting before it and
    leaving it unsigned after."""
    if empty_db.is_sqlite:
        pytest.skip("PostgreSQL only: SQLite's writers take turns on the whole file")
    await upgrade(empty_db, "0008")
    async with empty_db.engine.connect() as old:  # the running version, mid-transaction
        await old.execute(
            text(
                "INSERT INTO audit_pending (at, actor, action, data) "
                "VALUES (CURRENT_TIMESTAMP, 'U1', 'partner.added', '{}')"
            )
        )
        migrating = asyncio.create_task(upgrade(empty_db))
        await asyncio.sleep(0.5)
        assert not migrating.done()  # it waits for the running version's transaction
        await old.commit()
    with pytest.raises(MigrationError, match="1 audit events wait to be chained"):
        await asyncio.wait_for(migrating, 10)
