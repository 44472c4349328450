"""read model version: a number every change to subscriptions' identity, partners, roles and watches renews

Each process keeps partners, roles and watches in memory (storage.readmodel) and reads this one row
before using them; triggers bump it whoever writes (the bot, the CLI, another process, a person with psql),
so a role revoked anywhere is seen at the next click. A subscription's partner of record is not part of
it (it changes with every apply and is always read from its row).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the trigger's events (a subscription's partner_id and partner_set_at change on every apply).
WATCHED = {
    "subscriptions": "INSERT OR DELETE OR UPDATE OF name, alias, provider",
    "partners": "INSERT OR DELETE OR UPDATE",
    "role_assignments": "INSERT OR DELETE OR UPDATE",
    "channel_watches": "INSERT OR DELETE OR UPDATE",
}
# A new random number rather than +1: a value once seen is not seen again, even after a rolled-back
# change, so a process never mistakes other tables for the ones it holds.
BUMP = {
    "postgresql": (
        "UPDATE read_model_version SET version = (random() * 9007199254740991)::bigint WHERE id = 1"
    ),
    "sqlite": "UPDATE read_model_version SET version = random() WHERE id = 1",
}


def upgrade() -> None:
    op.create_table(
        "read_model_version",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO read_model_version (id, version) VALUES (1, 1)")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION dpor_bump_read_model() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {BUMP[dialect]}; RETURN NULL; END $$"
        )
        for table, events in WATCHED.items():
            op.execute(
                f"CREATE TRIGGER {table}_read_model AFTER {events} OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION dpor_bump_read_model()"
            )
        return
    for table, events in WATCHED.items():
        for event in events.split(" OR "):  # SQLite: one trigger per event, for each row
            name = f"{table}_read_model_{event.split()[0].lower()}"
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {BUMP[dialect]}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(f"DROP TRIGGER {table}_read_model ON {table}")
        op.execute("DROP FUNCTION dpor_bump_read_model()")
    else:
        for table, events in WATCHED.items():
            for event in events.split(" OR "):
                op.execute(f"DROP TRIGGER {table}_read_model_{event.split()[0].lower()}")
    op.drop_table("read_model_version")
