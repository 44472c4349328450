"""What every `dpor-bot` command shares: settings, the database, one-line failures and table output."""

from __future__ import annotations

import asyncio
import csv
import getpass
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any, TextIO, TypeVar

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bot import audit_keys
from bot.errors import OPERATOR_PREFIX, Refusal
from bot.settings import ConfigError, Settings, load_settings
from handlers.grammar import slack_user
from storage.db import Database
from storage.migrate import MigrationError, is_current, upgrade
from storage.urls import redact_url

T = TypeVar("T")


class Failed(click.ClickException):
    """A refusal or failure the operator can act on: an `error:` line on stderr (one for each problem, such
    as each bad variable), exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        for line in self.format_message().splitlines() or [""]:
            click.echo(f"error: {line}", err=True)


def actor() -> str:
    """Who the audit log records for this command: the operator's login name."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name for this uid (e.g. an arbitrary container user)
        login = ""
    return f"{OPERATOR_PREFIX}{login or 'cli'}"[:64]


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


def first_line(exc: BaseException) -> str:
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__


# The bot's sentences name the /dpor commands a Slack user would type; at the CLI they name its own.
_IN_THE_CLI = (
    (re.compile(r"`/dpor pending`"), "`dpor-bot requests list --status pending`"),
    (re.compile(r"`/dpor cancel (\d+)`"), r"`dpor-bot requests cancel \1 --reason TEXT`"),
    (re.compile(r"`/dpor list`"), "`dpor-bot subscriptions list`"),
    (
        re.compile(r"`/dpor role grant @someone (owner|admin) ([^`]+)`"),
        r"`dpor-bot roles grant SLACK_USER_ID \1 --subscription \2`",
    ),
    # Slack's date tokens (bot.errors.moment): a terminal shows their UTC fallback.
    (re.compile(r"<!date\^\d+\^[^|>]*\|([^>]*)>"), r"\1"),
)


def in_the_cli(message: str) -> str:
    """A refusal's sentence as the CLI shows it: the /dpor commands it suggests become `dpor-bot` ones."""
    for pattern, replacement in _IN_THE_CLI:
        message = pattern.sub(replacement, message)
    return message


def _where(database_url: str, variable: str | None) -> str:
    return f"{redact_url(database_url)}" + (f" ({variable})" if variable else "")


@contextmanager
def reported(database_url: str | None = None, variable: str | None = "DATABASE_URL") -> Iterator[None]:
    """Turn the failures an operator can act on into `Failed`; anything else is a bug: show its traceback.

    A database failure names the database by its URL with the password masked, and the variable it came
    from (`variable`).
    """
    try:
        yield
    except ConfigError as exc:
        raise Failed(str(exc)) from None
    except Refusal as exc:
        raise Failed(in_the_cli(exc.message)) from None
    except BrokenPipeError:
        raise  # click handles a closed pipe (`dpor-bot audit export | head`) quietly
    except OSError as exc:
        if not database_url:
            raise Failed(first_line(exc)) from None
        check = f" (check {variable})" if variable else ""
        raise Failed(
            f"cannot reach the database at {redact_url(database_url)}: {first_line(exc)}{check}"
        ) from None
    except SQLAlchemyError as exc:
        where = f" at {_where(database_url, variable)}" if database_url else ""
        raise Failed(f"database error{where}: {first_line(exc)}") from None
    except MigrationError as exc:
        raise Failed(f"migrations: {first_line(exc)}") from None


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


def run(work: Callable[[Database], Awaitable[T]], *, check_schema: bool = True, audit_key: bool = True) -> T:
    """Open the configured database, make sure its schema is current, load the audit key (a command that
    may write to the audit log refuses without it; `audit_key=False`: one that only reads), run `work`,
    and close it."""
    config = settings()
    url = config.database_url

    async def session() -> T:
        db = Database(url)
        try:
            if check_schema:
                await _ensure_schema(db)
                await audit_keys.prepare(db, config, required=audit_key)
            return await work(db)
        finally:
            await db.dispose()

    with reported(url):
        return asyncio.run(session())


def sdk_logging(verbose: bool) -> None:
    """The Azure SDK logs through `azure.*` (azure.identity dumps its whole credential chain on a failed
    sign-in): quiet unless --verbose, when it and the bot's own loggers write to stderr."""
    if verbose:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        for name in ("azure", "dpor"):
            logging.getLogger(name).setLevel(logging.INFO)
        return
    # The command's own table already says what failed; the providers' warnings would only repeat it.
    for name in ("azure", "dpor.providers"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Aligned columns, one record a line, `-` for nothing: easy to read and to grep or cut."""
    cells = [["-" if value is None or value == "" else str(value) for value in row] for row in rows]
    widths = [max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)]
    for line in [list(headers), *cells]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def when(at: datetime | None) -> str | None:
    return None if at is None else f"{at:%Y-%m-%dT%H:%MZ}"


def read_csv(path: str, rows: Callable[[TextIO, str], list[T]]) -> list[T]:
    """A CSV file the operator names, read whole by `rows`: an unreadable or undecodable file is one line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return rows(handle, path)
    except OSError as exc:
        raise Failed(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Failed(f"{path} is not a UTF-8 CSV file: {exc}") from None
