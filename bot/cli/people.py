"""`dpor-bot people`: Slack users linked to Microsoft Entra object IDs, for DPOR_ROLE_SOURCE=azure."""

from __future__ import annotations

import asyncio
import csv
from typing import TextIO

import click

from bot import people
from bot.cli.command import Failed, actor, read_csv, reported, run, settings, slack_user_id, table, when

CSV_COLUMNS = ("slack_user_id", "object_id", "upn")
HINT = "an object ID (a GUID, such as 0b1f6e6a-2c1d-4f57-9a7e-1f8c2d3e4a5b) nor a UPN (name@contoso.com)"


@click.group("people")
def people_group() -> None:
    """Slack users linked to their Microsoft Entra object IDs (roles from Azure: DPOR_ROLE_SOURCE=azure)."""


def _identity(text: str) -> people.Link:
    """An object ID as given, or a UPN looked up in Microsoft Graph; anything else refused."""
    oid = people.object_id(text)
    if oid is not None:
        return people.Link("", oid)
    name = people.upn(text)
    if name is None:
        raise Failed(f"{text.strip()!r} is neither {HINT}")
    config = settings()
    with reported():
        return people.Link("", asyncio.run(people.lookup_upn(config, name)), name)


@people_group.command("link")
@click.argument("user", metavar="SLACK_USER_ID")
@click.argument("identity", metavar="OBJECT_ID_OR_UPN")
def people_link(user: str, identity: str) -> None:
    """Link a Slack user to a Microsoft Entra object ID (a UPN is looked up in Microsoft Graph). Audited."""
    user_id = slack_user_id(user)
    found = _identity(identity)
    row = people.Link(user_id, found.object_id, found.upn)
    result = run(lambda database: people.link(database, [row], actor=actor()))
    if result.unchanged:
        click.echo(f"unchanged: {user_id} is already linked to {row.object_id}")
    else:
        click.echo(f"linked {user_id} to {row.object_id}" + (f" ({row.upn})" if row.upn else ""))


def read_people_csv(path: str) -> list[people.Link]:
    """Every row checked before anything is written; any bad row refuses the whole file, naming its line."""
    return read_csv(path, _rows)


def _rows(handle: TextIO, path: str) -> list[people.Link]:
    reader = csv.reader(handle)
    header = [column.strip().lower() for column in next(reader, [])]
    if header not in (list(CSV_COLUMNS), list(CSV_COLUMNS[:2])):
        raise Failed(f"{path}, line 1: expected the header row {','.join(CSV_COLUMNS)} (upn optional)")
    rows: list[people.Link] = []
    line_of: dict[str, int] = {}
    for fields in reader:
        where = f"{path}, line {reader.line_num}"
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise Failed(f"{where}: expected {len(header)} fields, found {len(fields)}")
        try:
            user_id = slack_user_id(fields[0])
        except Failed as exc:
            raise Failed(f"{where}: {exc.message}") from None
        oid = people.object_id(fields[1])
        if oid is None:
            raise Failed(
                f"{where}: {fields[1].strip()!r} is not an object ID (a GUID); a UPN goes in column 3"
            )
        name = None
        if len(fields) > 2 and fields[2].strip():
            name = people.upn(fields[2])
            if name is None:
                raise Failed(f"{where}: {fields[2].strip()!r} is not a UPN (name@domain)")
        if user_id in line_of:
            raise Failed(f"{where}: {user_id} is already on line {line_of[user_id]}")
        line_of[user_id] = reader.line_num
        rows.append(people.Link(user_id, oid, name))
    return rows


@people_group.command("import")
@click.argument("file", metavar="FILE.csv")
def people_import(file: str) -> None:
    """Link people from a CSV file with the header row slack_user_id,object_id[,upn].

    All or nothing: a bad row refuses the whole file. Importing the same file again changes nothing.
    """
    rows = read_people_csv(file)
    result = run(lambda database: people.link(database, rows, actor=actor()))
    click.echo(f"linked {result.added}, updated {result.updated}, unchanged {result.unchanged}")


@people_group.command("unlink")
@click.argument("user", metavar="SLACK_USER_ID")
def people_unlink(user: str) -> None:
    """Remove a Slack user's link: they hold no role from Azure until linked again. Audited."""
    user_id = slack_user_id(user)
    gone = run(lambda database: people.unlink(database, user_id, actor=actor()))
    click.echo(
        f"unlinked {user_id} (was {gone.object_id})" if gone else f"unchanged: {user_id} was not linked"
    )


@people_group.command("list")
def people_list() -> None:
    """Show every linked person."""
    found = run(people.everyone, audit_key=False)
    if not found:
        click.echo("no people linked: link one with `dpor-bot people link` or `people import`")
        return
    table(
        ("SLACK_USER", "OBJECT_ID", "UPN", "LINKED_BY", "LINKED_AT"),
        [(p.slack_user_id, p.object_id, p.upn, p.linked_by, when(p.linked_at)) for p in found],
    )
