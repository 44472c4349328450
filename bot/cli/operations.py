"""`dpor-bot` commands that run and watch the bot: serve, socket, db, audit, outbox, reconcile, sandbox."""

from __future__ import annotations

import asyncio

import click

from bot import audit_keys, outbox
from bot.cli.audit import audit_group  # noqa: F401  registered in bot.cli as operations.audit_group
from bot.cli.command import Failed, actor, reported, run, sdk_logging, settings, table, when
from storage.db import Database
from storage.migrate import is_current, upgrade


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default: $PORT, else 3000).")
def serve(port: int | None) -> None:
    """Serve Slack over HTTP: POST /slack/events and GET /healthz."""
    from bot import app

    config = settings()
    with reported():
        asyncio.run(app.run_http(config, port or config.port))


@click.command()
def socket() -> None:
    """Connect to Slack in Socket Mode (needs SLACK_APP_TOKEN)."""
    from bot import app

    config = settings()
    with reported():
        asyncio.run(app.run_socket(config))


@click.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations the database does not have yet."""

    config = settings()

    async def work(database: Database) -> tuple[bool, str | None]:
        upgraded = not await is_current(database)
        if upgraded:
            await upgrade(database)
        # The audit key: an embedded database makes its key file now (and keys a chain written before keys).
        return upgraded, await audit_keys.prepare(database, config, required=False)

    upgraded, problem = run(work, check_schema=False)
    click.echo("database upgraded to the newest schema" if upgraded else "database is at the newest schema")
    if problem:
        click.echo(f"note: {problem}", err=True)


@click.command("reconcile")
@click.option("--verbose", is_flag=True, help="Show the Azure SDK's log lines (a failed sign-in's detail).")
def reconcile_command(verbose: bool) -> None:
    """Compare each subscription's partner of record with what its provider reports now.

    Lists the subscriptions that are not in sync. Each new drift is recorded in the audit log
    (partner.drift) and announced in the notification channels (the running bot delivers it).
    Exit status: 0 no drift, 3 drift found, 1 a subscription could not be read.
    """
    from bot import reconcile
    from bot.policy import Policy
    from bot.providers import Providers

    config = settings()
    sdk_logging(verbose)

    async def work(database: Database) -> list[reconcile.Finding]:
        providers = Providers(config, database)
        return await reconcile.reconcile(database, providers, Policy.from_settings(config), actor=actor())

    def cells(finding: reconcile.Finding) -> tuple[str | None, str | None, str, str | None]:
        if finding.status != reconcile.DRIFT:
            return finding.recorded, finding.observed, finding.status, finding.message
        names = f"; the target names it {finding.observed_name}" if finding.observed_name else ""
        seen = "new: recorded and announced" if finding.announced else f"known since {when(finding.since)}"
        return finding.recorded or "none", finding.observed or "none", finding.status, seen + names

    findings = run(work)
    drift = [f for f in findings if f.status == reconcile.DRIFT]
    errors = [f for f in findings if f.status == reconcile.ERROR]
    shown = [f for f in findings if f.status != reconcile.IN_SYNC]
    if shown:
        table(
            ("SUBSCRIPTION", "ALIAS", "PROVIDER", "RECORD", "TARGET", "STATUS", "DETAIL"),
            [(f.subscription_id, f.alias, f.provider, *cells(f)) for f in shown],
        )
    click.echo(
        f"{len(findings)} subscriptions checked: {len(drift)} drifted "
        f"({sum(f.announced for f in drift)} new), {len(errors)} could not be read"
    )
    if drift:
        raise click.exceptions.Exit(3)
    if errors:
        raise Failed(f"{len(errors)} subscriptions could not be read; see DETAIL above")


@click.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port for the page (default: 8000; 0: any free port)."
)
@click.option(
    "--database-url",
    envvar="DPOR_SANDBOX_DATABASE_URL",
    help="A database of the sandbox's own, kept on exit; refused if it holds anyone else's data.",
)
def sandbox(port: int | None, database_url: str | None) -> None:
    """Try the whole flow in a browser, offline: the bot and a local stand-in for Slack, with sample data.

    The data lives in a temporary database, removed on exit, unless --database-url (or
    DPOR_SANDBOX_DATABASE_URL) names one; DATABASE_URL is never used. Ctrl-C stops it.
    """
    from sandbox.server import DEFAULT_PORT, run_sandbox

    with reported(database_url, "--database-url"):
        asyncio.run(run_sandbox(DEFAULT_PORT if port is None else port, database_url))


@click.group("outbox")
def outbox_group() -> None:
    """The outbox: Slack messages and applies waiting for the worker, and dead ones."""


def _one_line(text: str | None, limit: int = 100) -> str | None:
    if not text:
        return None
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@outbox_group.command("list")
@click.option("--dead", is_flag=True, help="Only dead rows (given up on), each with its last error.")
def outbox_list(dead: bool) -> None:
    """Show rows not delivered yet, oldest first: waiting (with their next attempt) and dead."""
    found = run(lambda database: outbox.undelivered(database, dead_only=dead))
    if not found:
        click.echo("no dead outbox rows" if dead else "nothing waiting in the outbox")
        return
    table(
        ("ID", "KIND", "KEY", "STATUS", "ATTEMPTS", "NEXT_ATTEMPT", "LAST_ERROR"),
        [
            (
                r.id,
                r.kind,
                r.key,
                r.status,
                r.attempts,
                when(r.available_at) if r.status == "pending" else None,
                _one_line(r.last_error),
            )
            for r in found
        ],
    )


@outbox_group.command("retry")
@click.argument("row_id", metavar="ID", type=int, required=False)
@click.option("--all-dead", is_flag=True, help="Every dead row.")
def outbox_retry(row_id: int | None, all_dead: bool) -> None:
    """Queue a dead row (ID, or --all-dead) again, with a fresh set of attempts, due now."""
    if (row_id is None) != all_dead:
        raise click.UsageError("give a dead row's ID, or --all-dead")
    requeued = run(lambda database: outbox.requeue(database, None if all_dead else [row_id]))
    if not requeued:
        click.echo("no dead outbox rows")
        return
    click.echo(f"requeued outbox row{'s' if len(requeued) > 1 else ''} {', '.join(map(str, requeued))}")


@outbox_group.command("discard")
@click.argument("row_id", metavar="ID", type=int, required=False)
@click.option("--all-dead", is_flag=True, help="Every dead row.")
def outbox_discard(row_id: int | None, all_dead: bool) -> None:
    """Set a dead row (ID, or --all-dead) aside for good: it is no longer counted dead nor retried, and the
    audit log records it (outbox.discarded). For a message that can never be delivered."""
    if (row_id is None) != all_dead:
        raise click.UsageError("give a dead row's ID, or --all-dead")
    who = actor()
    discarded = run(lambda database: outbox.discard(database, None if all_dead else [row_id], actor=who))
    if not discarded:
        click.echo("no dead outbox rows")
        return
    click.echo(f"discarded outbox row{'s' if len(discarded) > 1 else ''} {', '.join(map(str, discarded))}")
