"""audit pending mac: each event waiting for the sealer carries the writer's signature

On PostgreSQL an audit event waits in audit_pending, committed, until the sealer chains it. The sealer
chained whatever it found there, so a row someone inserted or edited in the database came out of it
with a valid hash. Now the writer signs each row with the audit key (storage.audit.pending_mac) and the
sealer chains only rows whose signature checks.

Rows waiting at the upgrade carry no signature and could not be told from forged ones: the upgrade
refuses while there are any, saying how to have them chained first. SQLite never writes this table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Until this transaction ends: an event the running version commits meanwhile waits, and is
        # written (unsigned, by that version) after the column exists, not between the count and it.
        bind.execute(sa.text("LOCK TABLE audit_pending IN ACCESS EXCLUSIVE MODE"))
    waiting = bind.execute(sa.text("SELECT count(*) FROM audit_pending")).scalar()
    if waiting:
        raise CommandError(
            f"{waiting} audit events wait to be chained (audit_pending): run `dpor-bot audit verify` "
            "with the version you are upgrading from (it chains them first), then upgrade again"
        )
    op.add_column("audit_pending", sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_pending", "mac")
