"""`dpor-bot audit`: verify the keyed chain (and that it extends every published checkpoint), export the
events and the checkpoints, re-key a chain written before keys."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

import click

from bot import audit, audit_keys, checkpoints
from bot.cli.command import Failed, actor, run, settings
from bot.errors import Refusal
from storage.db import Database


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit log: a keyed hash chain, and checkpoints of its head published outside."""


def _checkpoints_from(path: Path) -> list[audit.Checkpoint]:
    try:
        with path.open(encoding="utf-8") as lines:
            return checkpoints.read(lines, str(path))
    except OSError as exc:
        raise Failed(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise Failed(f"cannot read {path}: it is not UTF-8 text") from None
    except Refusal as exc:
        raise Failed(exc.message) from None


@audit_group.command("verify")
@click.option(
    "--checkpoints",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also prove the log still extends every checkpoint in FILE (JSON lines of seq, hash, at; or the "
    "log's and the audit channel's `seq=N hash=H at=T` lines).",
)
def audit_verify(file: Path | None) -> None:
    """Recompute the keyed hash chain; exit 1 naming the first event that does not fit (and, with
    --checkpoints, the first published checkpoint the log contradicts). Needs the audit key."""
    published = _checkpoints_from(file) if file is not None else []
    result = run(lambda database: audit.verify(database, checkpoints=published))
    if not result.ok:
        lines = []
        if result.broken_seq is not None:
            lines.append(f"audit chain broken at event {result.broken_seq}: {result.problem}")
        if result.contradicted is not None:
            point, why = result.contradicted, result.contradiction
            lines.append(f"the audit log contradicts checkpoint {point}: {why}")
        if result.forged:
            lines.append(audit.forged_text(result.forged))
        raise Failed("; and ".join(lines))
    held = f"; it extends all {result.checkpoints} checkpoints given" if file is not None else ""
    click.echo(f"audit chain intact: {result.events} events{held}")


def _to(output: Path | None, write: Callable[[Database, TextIO], Awaitable[int]], what: str) -> None:
    """Write to stdout, or to `output` (removed again if the command fails half-way)."""
    if output is None:
        run(lambda database: write(database, sys.stdout), audit_key=False)
        return
    try:
        out = output.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise Failed(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        with out:
            count = run(lambda database: write(database, out), audit_key=False)
    except BaseException:
        output.unlink(missing_ok=True)  # no partial export left behind to be mistaken for a whole one
        raise
    click.echo(f"exported {count} {what} to {output}", err=True)


@audit_group.command("export")
@click.option("--format", "fmt", type=click.Choice(("jsonl", "csv")), default="jsonl", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout.")
def audit_export(fmt: str, output: Path | None) -> None:
    """Write every audit event, oldest first, with its hashes (needs no key)."""
    _to(output, lambda database, out: audit.export(database, out, fmt), "events")


@audit_group.command("checkpoints")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not to stdout.")
def audit_checkpoints(output: Path | None) -> None:
    """Write every checkpoint taken (the chain's head as published), oldest first, as JSON lines: seq,
    hash, at. Keep a copy outside the database: `audit verify --checkpoints` reads it back."""
    _to(output, checkpoints.export, "checkpoints")


@audit_group.command("checkpoint")
def audit_checkpoint() -> None:
    """Take a checkpoint now: record the chain's head, print it (and log it), and queue it for
    DPOR_AUDIT_CHANNEL (the running bot posts it). The bot takes one itself after each applied change
    and daily."""
    config = settings()

    async def work(database: Database) -> audit.Checkpoint | None:
        async with database.write() as session:
            point = await checkpoints.take(session, config.audit_channel, checkpoints.CLI)
        checkpoints.published(point)
        return point

    point = run(work)
    if point is None:
        raise Failed("the audit log is empty: there is no head to publish yet")
    click.echo(f"audit checkpoint {point}")


@audit_group.command("accept")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1), required=True)
def audit_accept(ids: tuple[int, ...]) -> None:
    """PostgreSQL: chain waiting events (audit_pending) the sealer refused for want of a valid signature,
    once you have checked each is genuine (an event a version before migration 0009 left unchained, say);
    `audit verify` names them. Records `audit.accepted`. Needs the audit key."""
    who = actor()
    try:
        found = run(lambda database: audit.accept(database, list(ids), who))
    except Refusal as exc:
        raise Failed(exc.message) from None
    missing = sorted(set(ids) - set(found))
    if found:
        click.echo(f"accepted and chained: {', '.join(map(str, found))}")
    if missing:
        raise Failed(f"not waiting in audit_pending: {', '.join(map(str, missing))}")


@audit_group.command("rekey")
def audit_rekey() -> None:
    """Key a chain written before keys: verify it as written (plain SHA-256), recompute every hash with
    the audit key, record `audit.rekeyed` and publish a checkpoint. Refused for a chain that does not
    verify. Run it once, after the upgrade that introduced the key."""
    config = settings()
    count = run(lambda database: audit_keys.rekey_unkeyed(database, config), audit_key=False)
    if count:
        click.echo(f"audit log re-keyed: {count} events verified and keyed")
    else:
        click.echo("the audit log is keyed already: nothing to re-key")
