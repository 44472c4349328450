"""The operator CLI `dpor-bot`: run the bot, migrate the database, manage reference data, audit.

`command` holds what every command shares; `reference` the subscriptions, partners and roles;
`requests` the change requests; `operations` serving, the schema, the audit log, the outbox, drift and
the sandbox; `doctor` the installation's self-check.
"""

from __future__ import annotations

from typing import Any

import click

from bot.cli import doctor, operations, people, reference, requests
from bot.cli.command import Failed
from bot.text import NOT_UTF8, undecodable


class _Commands(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> Any:
        # A command line whose bytes are not UTF-8 (`Café` typed in a Latin-1 terminal) reaches Python as
        # lone surrogates, which no database, URL or file name can hold: a traceback or a "database error"
        # wherever one went. Refused in one line for every command, before anything runs.
        if any(undecodable(arg) for arg in args):
            raise Failed(f"the command line {NOT_UTF8}")
        return super().parse_args(ctx, args)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dpor-bot", prog_name="dpor-bot", message="%(prog)s %(version)s")
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
    people.people_group,
    requests.requests,
    operations.audit_group,
    operations.reconcile_command,
    operations.sandbox,
    operations.outbox_group,
    doctor.doctor,
):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="dpor-bot")
