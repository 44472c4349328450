"""What the sandbox takes for its own database, and what it refuses (sandbox.database)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.directory import SubscriptionRow, add_partner, grant_role, upsert_subscriptions
from sandbox.database import foreign_data
from sandbox.seed import ACTOR, seed
from storage.db import Database
from storage.models import Partner

REAL = SubscriptionRow("33333333-3333-4333-8333-333333333333", "Real Production")


async def test_a_new_or_empty_database_is_the_sandboxs(db: Database, tmp_path: Path) -> None:
    missing = tmp_path / "not-yet.db"
    assert await foreign_data(f"sqlite+aiosqlite:///{missing}") is None
    assert not await asyncio.to_thread(missing.exists)  # looking did not create it
    assert await foreign_data(db.url) is None  # migrated, no rows


async def test_what_the_seed_and_the_page_wrote_is_the_sandboxs(db: Database) -> None:
    await seed(db)
    await seed(db)
    await grant_role(db, "U0BYSTAND", "admin", "staging-us", actor="U0OWNER1")  # through the page
    assert await foreign_data(db.url) is None


async def test_an_operators_database_is_not(db: Database) -> None:
    await upsert_subscriptions(db, [REAL], actor="cli:ops")
    assert await foreign_data(db.url) == (
        "its audit log begins with an event by 'cli:ops', not with the sandbox's seed"
    )
    await seed(db)  # what the sandbox did before it checked: its made-up owners on top of real data
    assert "begins with an event by 'cli:ops'" in (await foreign_data(db.url) or "")


@pytest.mark.parametrize(
    ("write", "found"),
    [
        (lambda db: grant_role(db, "U0REAL", "owner", None, actor="cli:ops"), "events by 'cli:ops'"),
        (lambda db: grant_role(db, "U0REAL", "owner", None, actor="U0REAL"), "events by 'U0REAL'"),
        (lambda db: add_partner(db, "7654321", "Real Partner", actor="cli:ops"), "events by 'cli:ops'"),
        (
            lambda db: upsert_subscriptions(db, [REAL], actor=ACTOR),
            f"subscription '{REAL.id}' is not one of the sandbox's",
        ),
    ],
    ids=["operator", "slack-user", "partner", "subscription"],
)
async def test_data_added_to_a_sandbox_database_by_anyone_else_is_not(db: Database, write, found) -> None:
    await seed(db)
    await write(db)
    assert found in (await foreign_data(db.url) or "")


async def test_rows_without_an_audit_log_are_not(db: Database) -> None:
    async with db.write() as session:
        session.add(Partner(partner_id="7654321", name="Imported, not audited"))
    assert await foreign_data(db.url) == "table 'partners' holds rows but the audit log is empty"


async def test_another_applications_tables_are_not(sqlite_url: str) -> None:
    db = Database(sqlite_url)
    try:
        await seed(db)
        async with db.write() as session:
            await session.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
            await session.execute(text("INSERT INTO invoices (id) VALUES (1)"))
    finally:
        await db.dispose()
    assert await foreign_data(sqlite_url) == "table 'invoices' holds rows and is not dpor-bot's"
