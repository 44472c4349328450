"""`dpor-bot subscriptions`, `partners` and `roles`: the reference data requests stand on."""

from __future__ import annotations

import csv
from typing import TextIO

import click

from bot.cli.command import Failed, actor, in_the_cli, read_csv, run, settings, slack_user_id, table, when
from bot.directory import (
    KEEP,
    ROLES,
    RoleChange,
    SubscriptionRow,
    add_partner,
    alias_key,
    change_role,
    list_partners,
    list_roles,
    list_subscriptions,
    upsert_subscriptions,
    validate_subscription,
)
from bot.directory import partner_id as valid_partner_id
from bot.errors import Refusal
from bot.owners import LastOwner
from bot.principals import add_principals, all_principals, object_id
from bot.providers import NAMES as PROVIDER_NAMES
from bot.providers import OLD_NAMES
from bot.removals import remove_partner, remove_subscription
from bot.roles import ROLES_FROM_AZURE
from storage.db import Database

CSV_COLUMNS = ("id", "name", "alias")


@click.group()
def subscriptions() -> None:
    """The cloud subscriptions dpor-bot governs."""


@subscriptions.command("add")
@click.argument("subscription_id", metavar="ID")
@click.option("--name", required=True, help="The subscription's display name.")
@click.option("--alias", help="A short name for /dpor commands, such as prod-eu (leave out for none).")
@click.option(
    "--provider",
    type=click.Choice([*PROVIDER_NAMES, *OLD_NAMES]),
    help="The partner provider for this subscription (default: DPOR_PROVIDER; leave out to keep it).",
)
def subscriptions_add(subscription_id: str, name: str, alias: str | None, provider: str | None) -> None:
    """Add the subscription ID, or update its name, alias and provider."""
    if provider in OLD_NAMES:
        click.echo(
            f"--provider {provider} is the old name of {OLD_NAMES[provider]}; stored as the new one.",
            err=True,
        )
        provider = OLD_NAMES[provider]
    row = SubscriptionRow(subscription_id, name, alias, provider)
    result = run(lambda database: upsert_subscriptions(database, [row], actor=actor()))
    verb = "added" if result.added else "updated" if result.updated else "unchanged:"
    click.echo(f"{verb} subscription {validate_subscription(row).id}")


def read_subscriptions_csv(path: str) -> list[SubscriptionRow]:
    """Read and validate every row; any bad row refuses the whole file, naming its line."""
    return read_csv(path, _subscription_rows)


def _subscription_rows(handle: TextIO, path: str) -> list[SubscriptionRow]:
    reader = csv.reader(handle)
    header = [column.strip().lower() for column in next(reader, [])]
    if header not in (list(CSV_COLUMNS), list(CSV_COLUMNS[:2])):
        raise Failed(f"{path}, line 1: expected the header row {','.join(CSV_COLUMNS)}")
    # Without the alias column every subscription keeps its alias; an empty alias cell removes it.
    absent = KEEP if len(header) == 2 else None
    rows: list[SubscriptionRow] = []
    line_of_id: dict[str, int] = {}
    line_of_alias: dict[str, tuple[int, str]] = {}
    for fields in reader:
        where = f"{path}, line {reader.line_num}"
        if not any(field.strip() for field in fields):
            continue
        if len(fields) not in (2, len(header)):
            raise Failed(f"{where}: expected {len(header)} fields, found {len(fields)}")
        try:
            alias = fields[2] if len(fields) > 2 else absent
            row = validate_subscription(SubscriptionRow(fields[0], fields[1], alias))
        except Refusal as exc:
            raise Failed(f"{where}: {exc.message}") from None
        if row.id in line_of_id:
            raise Failed(f"{where}: subscription {row.id} is already on line {line_of_id[row.id]}")
        line_of_id[row.id] = reader.line_num
        if isinstance(row.alias, str):
            line, other = line_of_alias.setdefault(alias_key(row.alias), (reader.line_num, row.alias))
            if line != reader.line_num:
                alike = "" if other == row.alias else f" (as {other}: they read the same)"
                raise Failed(f"{where}: alias {row.alias} is already given on line {line}{alike}")
        rows.append(row)
    return rows


@subscriptions.command("import")
@click.argument("file", metavar="FILE.csv")
def subscriptions_import(file: str) -> None:
    """Add or update subscriptions from a CSV file with the header row id,name,alias.

    Importing the same file again changes nothing. A bad row refuses the whole file. Without the
    alias column (header id,name) every subscription keeps its alias.
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


@subscriptions.command("remove")
@click.argument("subscription_id", metavar="ID")
def subscriptions_remove(subscription_id: str) -> None:
    """Remove a subscription that has no request on record, with the roles on it and channels' watches.

    Refused while it has any request (open or decided): its requests and their audit events refer to it,
    and dpor-bot keeps that history whole. Audited as subscription.removed.
    """
    removed = run(lambda database: remove_subscription(database, subscription_id, actor=actor()))
    also = [
        f"{len(removed.roles)} role{'s' if len(removed.roles) != 1 else ''}" if removed.roles else "",
        f"{len(removed.watches)} channel watch{'es' if len(removed.watches) != 1 else ''}"
        if removed.watches
        else "",
    ]
    extra = " and ".join(part for part in also if part)
    click.echo(
        f"removed subscription {removed.id} ({removed.name})" + (f" with {extra} on it" if extra else "")
    )


@click.group()
def partners() -> None:
    """The partner directory (Partner ID -> name) shown on approval cards."""


@partners.command("add")
@click.argument("partner_id")
@click.option("--name", required=True, help="The partner's name, as people should recognise it.")
@click.option(
    "--principal",
    "principals",
    multiple=True,
    help="An object ID the partner linked its Partner ID to (PAL), credited by azure-rbac. Repeatable.",
)
def partners_add(partner_id: str, name: str, principals: tuple[str, ...]) -> None:
    """Add a partner to the directory, or rename it; link its principals. Audited."""
    try:
        checked = [object_id(p) for p in principals]  # all checked before anything is written
    except Refusal as exc:
        raise Failed(in_the_cli(exc.message)) from None
    changed = run(lambda database: add_partner(database, partner_id, name, actor=actor()))
    pid = valid_partner_id(partner_id)  # as stored: in ASCII digits
    click.echo(f"saved partner {pid}" if changed else f"unchanged: partner {pid} already has that name")
    if checked:
        added = run(lambda database: add_principals(database, pid, checked, actor=actor()))
        for oid in checked:
            click.echo(f"linked principal {oid}" if oid in added else f"unchanged: {oid} already linked")


@partners.command("list")
def partners_list() -> None:
    """Show the partner directory."""
    found = run(list_partners)
    if not found:
        click.echo("no partners: add one with `dpor-bot partners add`")
        return
    linked = run(all_principals)
    table(
        ("PARTNER_ID", "NAME", "PRINCIPALS"),
        [(p.partner_id, p.name, ",".join(linked.get(p.partner_id, []))) for p in found],
    )


@partners.command("remove")
@click.argument("partner_id")
def partners_remove(partner_id: str) -> None:
    """Remove a partner from the directory; refused while an open request names it. Audited."""
    name = run(lambda database: remove_partner(database, partner_id, actor=actor()))
    click.echo(f"removed partner {partner_id.strip()} ({name})")


@click.group()
def roles() -> None:
    """Who may request (admin) and approve (owner) changes."""


def _role_command(name: str, *, grant: bool, summary: str, done: str, same: str) -> click.Command:
    """`roles grant` and `roles revoke`: one shape, one code path."""

    @click.command(name, help=summary)
    @click.argument("user", metavar="SLACK_USER_ID")
    @click.argument("role", type=click.Choice(ROLES, case_sensitive=False))
    @click.option(
        "--subscription",
        metavar="ID_OR_ALIAS",
        help="One subscription; leave out (or give * or all) for every subscription.",
    )
    @click.option(
        "--force",
        is_flag=True,
        hidden=grant,
        help="Revoke an owner role even when it leaves a subscription with no owner (audited).",
    )
    def command(user: str, role: str, subscription: str | None, force: bool) -> None:
        if settings().role_source == "azure":
            raise Failed(ROLES_FROM_AZURE)
        user_id = slack_user_id(user)
        notify = settings().notify_channels  # the channels told of the change

        async def work(database: Database) -> RoleChange:
            try:
                return await change_role(
                    database,
                    user_id,
                    role,
                    subscription,
                    grant=grant,
                    actor=actor(),
                    force=force,
                    notify=notify,
                )
            except LastOwner as exc:
                raise Failed(
                    f"{in_the_cli(exc.message)} Or revoke it anyway with --force (audited)."
                ) from None

        result = run(work)
        click.echo((done if result.changed else same).format(role=role, user=user_id, scope=result.scope))
        if result.left_without_owner:
            click.echo(
                "warning: forced: no owner is left on " + ", ".join(result.left_without_owner), err=True
            )

    return command


roles.add_command(
    _role_command(
        "grant",
        grant=True,
        summary="Grant a Slack user a role on one subscription or on all of them.",
        done="granted {role} to {user} on {scope}",
        same="unchanged: {user} already holds {role} on {scope}",
    )
)
roles.add_command(
    _role_command(
        "revoke",
        grant=False,
        summary="Revoke a role granted with `roles grant` (the same scope).",
        done="revoked {role} from {user} on {scope}",
        same="unchanged: {user} does not hold {role} on {scope}",
    )
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
