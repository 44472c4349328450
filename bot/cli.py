"""The operator CLI `dpor-bot`: run the bot, migrate the database, manage reference data, audit."""

from __future__ import annotations

import asyncio
import csv
import getpass
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bot import audit, outbox
from bot.directory import (
    ROLES,
    SubscriptionRow,
    add_partner,
    grant_role,
    list_partners,
    list_roles,
    list_subscriptions,
    resolve_subscription,
    revoke_role,
    slack_user,
    upsert_subscriptions,
    validate_subscription,
)
from bot.errors import Refusal
from bot.providers import NAMES as PROVIDER_NAMES
from bot.settings import ConfigError, Settings, load_settings
from storage.db import Database
from storage.migrate import MigrationError, is_current, upgrade
from storage.models import ALL_SUBSCRIPTIONS, ChangeRequest
from storage.queries import requests_page

T = TypeVar("T")

REQUEST_STATUSES = (
    "pending",
    "approved",
    "applying",
    "applied",
    "failed",
    "rejected",
    "cancelled",
    "expired",
)
CSV_COLUMNS = ("id", "name", "alias")


class Failed(click.ClickException):
    """A refusal or failure the operator can act on: one `error:` line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def actor() -> str:
    """Who the audit log records for this command: the operator's login name."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name for this uid (e.g. an arbitrary container user)
        login = ""
    return f"cli:{login or 'cli'}"[:64]


def slack_user_id(text: str) -> str:
    """Accept `U123`, `<@U123>` or `<@U123|name>` and return `U123`."""
    text = text.strip()
    user = slack_user(text)
    if user is None:
        raise Failed(
            f"{text!r} is not a Slack user ID: expected one such as U012AB3CD, "
            "<@U012AB3CD> or <@U012AB3CD|name>"
        )
    return user


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


@contextmanager
def reported(database_url: str | None = None) -> Iterator[None]:
    """Turn the failures an operator can act on into `Failed`; anything else is a bug: show its traceback."""
    try:
        yield
    except ConfigError as exc:
        raise Failed(str(exc)) from None
    except Refusal as exc:
        raise Failed(exc.message) from None
    except BrokenPipeError:
        raise  # click handles a closed pipe (`dpor-bot audit export | head`) quietly
    except OSError as exc:
        where = f"cannot reach the database at {_safe_url(database_url)}: " if database_url else ""
        raise Failed(where + _first_line(exc)) from None
    except SQLAlchemyError as exc:
        where = f" at {_safe_url(database_url)}" if database_url else ""
        raise Failed(f"database error{where}: {_first_line(exc)}") from None
    except MigrationError as exc:
        raise Failed(f"migrations: {_first_line(exc)}") from None


def settings() -> Settings:
    with reported():
        return load_settings()


async def _ensure_schema(db: Database) -> None:
    if await is_current(db):
        return
    if db.is_sqlite:
        await upgrade(db)  # an embedded database keeps itself current
    else:
        raise Failed("the database schema is not current: run `dpor-bot db upgrade`")


def run(work: Callable[[Database], Awaitable[T]], *, check_schema: bool = True) -> T:
    """Open the configured database, make sure its schema is current, run `work`, and close it."""
    url = settings().database_url

    async def session() -> T:
        db = Database(url)
        try:
            if check_schema:
                await _ensure_schema(db)
            return await work(db)
        finally:
            await db.dispose()

    with reported(url):
        return asyncio.run(session())


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Aligned columns, one record a line, `-` for nothing: easy to read and to grep or cut."""
    cells = [["-" if value is None or value == "" else str(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for line in [list(headers), *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def when(at: datetime | None) -> str | None:
    return None if at is None else f"{at:%Y-%m-%dT%H:%MZ}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate dpor-bot. Every command reads DATABASE_URL (default: dpor-bot.db in this directory)."""


@cli.command()
@click.option("--port", type=click.IntRange(1, 65535), help="Port to listen on (default: $PORT, else 3000).")
def serve(port: int | None) -> None:
    """Serve Slack over HTTP: POST /slack/events and GET /healthz."""
    from bot import app

    config = settings()
    with reported():
        asyncio.run(app.run_http(config, port or config.port))


@cli.command()
def socket() -> None:
    """Connect to Slack in Socket Mode (needs SLACK_APP_TOKEN)."""
    from bot import app

    config = settings()
    with reported():
        asyncio.run(app.run_socket(config))


@cli.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply the schema migrations the database does not have yet."""

    async def work(database: Database) -> bool:
        if await is_current(database):
            return False
        await upgrade(database)
        return True

    upgraded = run(work, check_schema=False)
    click.echo("database upgraded to the newest schema" if upgraded else "database is at the newest schema")


@cli.group()
def subscriptions() -> None:
    """The cloud subscriptions dpor-bot governs."""


@subscriptions.command("add")
@click.argument("subscription_id", metavar="ID")
@click.option("--name", required=True, help="The subscription's display name.")
@click.option("--alias", help="A short name for /dpor commands, such as prod-eu (leave out for none).")
@click.option(
    "--provider",
    type=click.Choice(PROVIDER_NAMES),
    help="The partner provider for this subscription (default: DPOR_PROVIDER; leave out to keep it).",
)
def subscriptions_add(subscription_id: str, name: str, alias: str | None, provider: str | None) -> None:
    """Add the subscription ID, or update its name, alias and provider."""
    row = SubscriptionRow(subscription_id, name, alias, provider)
    result = run(lambda database: upsert_subscriptions(database, [row], actor=actor()))
    verb = "added" if result.added else "updated" if result.updated else "unchanged:"
    click.echo(f"{verb} subscription {subscription_id.strip().lower()}")


def read_subscriptions_csv(path: str) -> list[SubscriptionRow]:
    """Read and validate every row; any bad row refuses the whole file, naming its line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return _subscription_rows(handle, path)
    except OSError as exc:
        raise Failed(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Failed(f"{path} is not a UTF-8 CSV file: {exc}") from None


def _subscription_rows(handle: TextIO, path: str) -> list[SubscriptionRow]:
    reader = csv.reader(handle)
    header = [column.strip().lower() for column in next(reader, [])]
    if header not in (list(CSV_COLUMNS), list(CSV_COLUMNS[:2])):
        raise Failed(f"{path}, line 1: expected the header row {','.join(CSV_COLUMNS)}")
    rows: list[SubscriptionRow] = []
    line_of_id: dict[str, int] = {}
    line_of_alias: dict[str, int] = {}
    for fields in reader:
        where = f"{path}, line {reader.line_num}"
        if not any(field.strip() for field in fields):
            continue
        if len(fields) not in (2, len(header)):
            raise Failed(f"{where}: expected {len(header)} fields, found {len(fields)}")
        try:
            row = validate_subscription(SubscriptionRow(*fields))
        except Refusal as exc:
            raise Failed(f"{where}: {exc.message}") from None
        if row.id in line_of_id:
            raise Failed(f"{where}: subscription {row.id} is already on line {line_of_id[row.id]}")
        if row.alias in line_of_alias:
            raise Failed(f"{where}: alias {row.alias} is already given on line {line_of_alias[row.alias]}")
        line_of_id[row.id] = reader.line_num
        if row.alias is not None:
            line_of_alias[row.alias] = reader.line_num
        rows.append(row)
    return rows


@subscriptions.command("import")
@click.argument("file", metavar="FILE.csv")
def subscriptions_import(file: str) -> None:
    """Add or update subscriptions from a CSV file with the header row id,name,alias.

    Importing the same file again changes nothing. A bad row refuses the whole file.
    """
    rows = read_subscriptions_csv(file)
    result = run(lambda database: upsert_subscriptions(database, rows, actor=actor()))
    click.echo(f"added {result.added}, updated {result.updated}, unchanged {result.unchanged}")


@subscriptions.command("list")
def subscriptions_list() -> None:
    """Show every subscription with its alias and partner of record."""
    subs = run(list_subscriptions)
    if not subs:
        click.echo("no subscriptions: add one with `dpor-bot subscriptions add` or `subscriptions import`")
        return
    table(("ID", "ALIAS", "PARTNER", "NAME"), [(s.id, s.alias, s.partner_id, s.name) for s in subs])


@cli.group()
def partners() -> None:
    """The partner directory (Partner ID -> name) shown on approval cards."""


@partners.command("add")
@click.argument("partner_id")
@click.option("--name", required=True, help="The partner's name, as people should recognise it.")
def partners_add(partner_id: str, name: str) -> None:
    """Add a partner to the directory, or rename it."""
    changed = run(lambda database: add_partner(database, partner_id, name, actor=actor()))
    pid = partner_id.strip()
    click.echo(f"saved partner {pid}" if changed else f"unchanged: partner {pid} already has that name")


@partners.command("list")
def partners_list() -> None:
    """Show the partner directory."""
    found = run(list_partners)
    if not found:
        click.echo("no partners: add one with `dpor-bot partners add`")
        return
    table(("PARTNER_ID", "NAME"), [(p.partner_id, p.name) for p in found])


@cli.group()
def roles() -> None:
    """Who may request (admin) and approve (owner) changes."""


def role_arguments(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option(
        "--subscription", metavar="ID_OR_ALIAS", help="One subscription (default: every subscription, *)."
    )(command)
    command = click.argument("role", type=click.Choice(ROLES, case_sensitive=False))(command)
    return click.argument("user", metavar="SLACK_USER_ID")(command)


async def _scope(database: Database, subscription: str | None) -> str:
    if subscription is None:
        return ALL_SUBSCRIPTIONS
    async with database.read() as session:
        return (await resolve_subscription(session, subscription)).id


@roles.command("grant")
@role_arguments
def roles_grant(user: str, role: str, subscription: str | None) -> None:
    """Grant a Slack user a role on one subscription or on all of them."""
    user_id = slack_user_id(user)

    async def work(database: Database) -> tuple[str, bool]:
        scope = await _scope(database, subscription)
        return scope, await grant_role(database, user_id, role, scope, actor=actor())

    scope, changed = run(work)
    click.echo(
        f"granted {role} to {user_id} on {scope}"
        if changed
        else f"unchanged: {user_id} already holds {role} on {scope}"
    )


@roles.command("revoke")
@role_arguments
def roles_revoke(user: str, role: str, subscription: str | None) -> None:
    """Revoke a role granted with `roles grant` (the same scope)."""
    user_id = slack_user_id(user)

    async def work(database: Database) -> tuple[str, bool]:
        scope = await _scope(database, subscription)
        return scope, await revoke_role(database, user_id, role, scope, actor=actor())

    scope, changed = run(work)
    click.echo(
        f"revoked {role} from {user_id} on {scope}"
        if changed
        else f"unchanged: {user_id} does not hold {role} on {scope}"
    )


@roles.command("list")
@click.option(
    "--subscription",
    metavar="ID_OR_ALIAS",
    help="Only the roles that apply to this subscription (its own and those on *).",
)
def roles_list(subscription: str | None) -> None:
    """Show role assignments; scope * means every subscription."""
    found = run(lambda database: list_roles(database, subscription))
    if not found:
        click.echo("no roles: grant one with `dpor-bot roles grant`")
        return
    table(
        ("USER", "ROLE", "SCOPE", "GRANTED_BY", "GRANTED_AT"),
        [(r.user_id, r.role, r.scope, r.granted_by, when(r.granted_at)) for r in found],
    )


@cli.group()
def requests() -> None:
    """Change requests made with /dpor set."""


async def _all_requests(database: Database, statuses: tuple[str, ...] | None) -> list[ChangeRequest]:
    found: list[ChangeRequest] = []
    async with database.read() as session:
        while True:
            page = await requests_page(session, statuses=statuses, limit=500, offset=len(found))
            found += page.items
            if not page.items or not page.more:
                return found


@requests.command("list")
@click.option("--status", type=click.Choice(REQUEST_STATUSES), help="Only requests in this state.")
def requests_list(status: str | None) -> None:
    """Show change requests, newest first."""
    found = run(lambda database: _all_requests(database, (status,) if status else None))
    if not found:
        click.echo("no requests" + (f" with status {status}" if status else ""))
        return
    table(
        ("ID", "STATUS", "SUBSCRIPTION", "PARTNER", "PREVIOUS", "REQUESTER", "CREATED", "DECIDED_BY"),
        [
            (
                r.id,
                r.status,
                r.subscription_id,
                r.partner_id,
                r.previous_partner_id,
                r.requester_id,
                when(r.created_at),
                r.decided_by,
            )
            for r in found
        ],
    )


@cli.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log."""


@audit_group.command("verify")
def audit_verify() -> None:
    """Recompute the hash chain; exit 1 naming the first event that does not fit."""
    result = run(audit.verify)
    if not result.ok:
        raise Failed(f"audit chain broken at event {result.broken_seq}: {result.problem}")
    click.echo(f"audit chain intact: {result.events} events")


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(("jsonl", "csv")), default="jsonl", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout.")
def audit_export(fmt: str, output: Path | None) -> None:
    """Write every audit event, oldest first, with its hashes."""
    if output is None:
        run(lambda database: audit.export(database, sys.stdout, fmt))
        return
    try:
        out = output.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise Failed(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        with out:
            count = run(lambda database: audit.export(database, out, fmt))
    except BaseException:
        output.unlink(missing_ok=True)  # no partial export left behind to be mistaken for a whole one
        raise
    click.echo(f"exported {count} events to {output}", err=True)


@cli.command("reconcile")
def reconcile_command() -> None:
    """Compare each subscription's partner of record with what its provider reports now.

    Lists the subscriptions that are not in sync. Each new drift is recorded in the audit log
    (partner.drift) and announced in the notification channels (the running bot delivers it).
    Exit status: 0 no drift, 3 drift found, 1 a subscription could not be read.
    """
    from bot import reconcile
    from bot.policy import Policy
    from bot.providers import Providers

    config = settings()

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


@cli.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port for the page (default: 8000; 0: any free port)."
)
def sandbox(port: int | None) -> None:
    """Try the whole flow in a browser, offline: the bot and a local stand-in for Slack, with sample data.

    The data lives in a temporary database, removed on exit, unless DATABASE_URL is set. Ctrl-C stops it.
    """
    from bot.sandbox import DEFAULT_PORT, run_sandbox

    with reported():
        asyncio.run(run_sandbox(DEFAULT_PORT if port is None else port))


@cli.group("outbox")
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


def main() -> None:
    cli(prog_name="dpor-bot")


if __name__ == "__main__":
    main()
