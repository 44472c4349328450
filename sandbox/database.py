"""The sandbox's database: a temporary one, or one named for the sandbox alone; never anybody else's.

The sandbox seeds made-up owners and its page, which has no login, grants and revokes roles. So it never
reads DATABASE_URL (set on every Heroku-style host, production's), and a database named through
--database-url or DPOR_SANDBOX_DATABASE_URL is used only when it holds no data, or only the sandbox's own.

"The sandbox's own" is read from the audit log, which every write of the product appends to and which
nobody rewrites unnoticed (its chain is hashed): the first event is the seed's (actor `sandbox`), every
event is by the seed, one of the made-up people or the bot itself, and every subscription is one the
seed made up. Rows in the product's tables with no audit log, or rows in a table the product does not
have, are somebody else's. The check only reads.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import Connection, column, inspect, literal_column, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bot.lifecycle import SYSTEM_ACTOR
from sandbox.seed import ACTOR, PEOPLE, SUBSCRIPTIONS
from storage.models import Base

VARIABLE = "DPOR_SANDBOX_DATABASE_URL"
OWN_ACTORS = (ACTOR, SYSTEM_ACTOR, *(p.id for p in PEOPLE))
_AUDIT = table("audit_events", column("seq"), column("actor"))
_SUBSCRIPTIONS = table("subscriptions", column("id"))
# Tables that hold rows as soon as the schema exists: the migrations write them.
SCHEMA_ROWS = ("alembic_version", "read_model_version")


async def foreign_data(url: str) -> str | None:
    """What gives away data in the database at `url` (an async driver's URL) that is not the sandbox's;
    None when the database is new, empty, or holds only what the sandbox wrote."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        if path in ("", ":memory:") or not await asyncio.to_thread(Path(path).exists):
            return None  # a new database: opening it here would create the file
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_foreign)
    finally:
        await engine.dispose()


def _foreign(conn: Connection) -> str | None:
    filled = [
        name
        for name in sorted(inspect(conn).get_table_names())
        if name not in SCHEMA_ROWS
        and conn.execute(select(literal_column("1")).select_from(table(name)).limit(1)).first()
    ]
    if not filled:
        return None
    strangers = [name for name in filled if name not in Base.metadata.tables]
    if strangers:
        return f"table {strangers[0]!r} holds rows and is not dpor-bot's"
    if "audit_events" not in filled:
        return f"table {filled[0]!r} holds rows but the audit log is empty"
    first = conn.execute(select(_AUDIT.c.actor).order_by(_AUDIT.c.seq).limit(1)).scalar_one()
    if first != ACTOR:
        return f"its audit log begins with an event by {first!r}, not with the sandbox's seed"
    outsider = conn.execute(
        select(_AUDIT.c.actor).where(_AUDIT.c.actor.not_in(OWN_ACTORS)).limit(1)
    ).scalar_one_or_none()
    if outsider is not None:
        return f"its audit log holds events by {outsider!r}"
    if "subscriptions" in filled:
        made_up = [s.id for s in SUBSCRIPTIONS]
        stranger = conn.execute(
            select(_SUBSCRIPTIONS.c.id).where(_SUBSCRIPTIONS.c.id.not_in(made_up)).limit(1)
        ).scalar_one_or_none()
        if stranger is not None:
            return f"subscription {stranger!r} is not one of the sandbox's"
    return None
