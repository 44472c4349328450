"""The operator CLI `dpor-bot`: run the bot, migrate the database, manage reference data, audit.

`command` holds what every command shares; `reference` the subscriptions, partners and roles;
`operations` serving, the schema, requests, the audit log, the outbox, drift and the sandbox.
"""

from __future__ import annotations

import click

from bot.cli import operations, reference


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate dpor-bot. Every command reads DATABASE_URL (default: dpor-bot.db in this directory)."""


# `dpor-bot --help` lists them alphabetically.
for _command in (
    operations.serve,
    operations.socket,
    operations.db,
    reference.subscriptions,
    reference.partners,
    reference.roles,
    operations.requests,
    operations.audit_group,
    operations.reconcile_command,
    operations.sandbox,
    operations.outbox_group,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="dpor-bot")
