"""Schema migrations: Alembic, run programmatically on the bot's own engine.

Alembic is imported only when a migration has to run, so a command on a current database starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import Connection

from storage.db import Database

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")
# The newest revision in migrations/versions; a test keeps it equal to Alembic's head.
HEAD = "0009"


class MigrationError(Exception):
    """Alembic could not migrate (e.g. the database is at a revision this code does not know)."""


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    from alembic import command
    from alembic.util import CommandError

    def _upgrade(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(_upgrade)
    except CommandError as exc:
        raise MigrationError(str(exc)) from None


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        exists = await conn.run_sync(lambda c: c.dialect.has_table(c, "alembic_version"))
        if not exists:
            return None
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()


async def is_current(db: Database) -> bool:
    """Whether the database is at the newest migration."""
    return await current_revision(db) == HEAD
