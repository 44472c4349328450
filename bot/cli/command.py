"""What every `dpor-bot` command shares: settings, the database, one-line failures and table output."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from bot.errors import Refusal
from bot.settings import ConfigError, Settings, load_settings
from handlers.grammar import slack_user
from storage.db import Database
from storage.migrate import MigrationError, is_current, upgrade
from storage.urls import redact_url

T = TypeVar("T")


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
        where = f"cannot reach the database at {redact_url(database_url)}: " if database_url else ""
        raise Failed(where + _first_line(exc)) from None
    except SQLAlchemyError as exc:
        where = f" at {redact_url(database_url)}" if database_url else ""
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
