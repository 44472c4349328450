"""`dpor-bot doctor`: is this installation ready to run? One line per check, `ok`, `FAIL` or `skip`, and why.

It changes nothing, anywhere: it reads the database (never creating or upgrading it), asks Slack
`auth.test` and `conversations.info`, and asks each provider in use what it carries where it can do so
without changing anything. A check that cannot run because an earlier one failed is skipped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from bot import audit, audit_keys
from bot.cli.command import Failed, first_line, sdk_logging, when
from bot.providers import CannotRead, PartnerProvider, ProviderError, Providers
from bot.settings import ConfigError, Settings, load_settings
from handlers.probe import Answer, SlackProbe
from storage import audit as chain
from storage import checkpoints as checkpoint_table
from storage.db import Database
from storage.directory import watch_channels
from storage.migrate import HEAD, current_revision
from storage.models import Subscription
from storage.queries import all_subscriptions, providers_named
from storage.urls import redact_url

OK, FAIL, SKIP = "ok", "FAIL", "skip"
DATABASE_TIMEOUT = 10.0


@dataclass
class Report:
    """The checks so far, each printed as it is made."""

    statuses: list[str] = field(default_factory=list)

    def add(self, status: str, name: str, detail: str) -> None:
        self.statuses.append(status)
        click.echo(f"{status:<4}  {name:<16}  {detail}")

    @property
    def failed(self) -> int:
        return self.statuses.count(FAIL)


@click.command()
@click.option("--verbose", is_flag=True, help="Show the Azure SDK's log lines (a failed sign-in's detail).")
def doctor(verbose: bool) -> None:
    """Check the database and its schema, Slack's token, the bot's channels, each provider in use and the
    audit chain: one line each (ok, FAIL or skip). Changes nothing. Exit status 1 when a check fails."""
    sdk_logging(verbose)
    report = Report()
    try:
        config = load_settings()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            report.add(FAIL, "settings", line)
        raise Failed("the settings are not valid: nothing else was checked") from None
    report.add(OK, "settings", "every variable that is set has a valid value")
    asyncio.run(_checks(config, report))
    if report.failed:
        raise Failed(f"{report.failed} of {len(report.statuses)} checks failed")


async def _checks(config: Settings, report: Report) -> None:
    db = await _database(config, report)
    try:
        watched = await _watched(db) if db is not None else []
        await _slack(config, report, watched)
        if db is None:
            for name in ("providers", "audit chain"):
                report.add(SKIP, name, "needs the database, at the newest schema")
            return
        await _providers(config, db, report)
        await _audit(config, db, report)
    finally:
        if db is not None:
            await db.dispose()


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


async def _database(config: Settings, report: Report) -> Database | None:
    """The database is reachable and at the newest schema; returns it when later checks may read it."""
    url = config.database_url
    shown = f"DATABASE_URL={redact_url(url)}"
    path = _sqlite_file(url)
    if path is not None and not await asyncio.to_thread(path.exists):  # connecting would create it
        report.add(
            FAIL,
            "database",
            f"{shown}: no such file yet (the bot creates it when it starts; so does `dpor-bot db upgrade`)",
        )
        report.add(SKIP, "schema", "needs the database")
        return None
    db = Database(url)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            revision = await current_revision(db)
    except TimeoutError:
        problem = f"did not answer within {DATABASE_TIMEOUT:g} s"
    except (OSError, SQLAlchemyError) as exc:
        problem = f"cannot reach it: {first_line(exc)}"
    else:
        problem = None
    if problem is not None:
        await db.dispose()
        report.add(FAIL, "database", f"{shown}: {problem}")
        report.add(SKIP, "schema", "needs the database")
        return None
    report.add(OK, "database", f"{shown}: reachable")
    if revision == HEAD:
        report.add(OK, "schema", f"at revision {HEAD}, the newest")
        return db
    upgrade = "run `dpor-bot db upgrade`" + (" (or start the bot: it upgrades SQLite itself)" if path else "")
    if revision is None:
        report.add(FAIL, "schema", f"no schema yet: {upgrade}")
    elif revision < HEAD:
        report.add(FAIL, "schema", f"at revision {revision}; this version needs {HEAD}: {upgrade}")
    else:
        report.add(
            FAIL, "schema", f"at revision {revision}, newer than this version of dpor-bot knows ({HEAD})"
        )
    await db.dispose()  # the later checks would read tables of another shape
    return None


async def _watched(db: Database) -> list[str]:
    async with db.read() as session:
        return await watch_channels(session)


async def _slack(config: Settings, report: Report, watched: list[str]) -> None:
    """The token works (auth.test), and the bot is in every channel it posts to (conversations.info)."""
    channels = [("approval channel", config.approval_channel)] if config.approval_channel else []
    channels += [("notify channel", c) for c in config.notify_channels]
    channels += [("audit channel", config.audit_channel)] if config.audit_channel else []
    listed = {channel for _, channel in channels}
    channels += [("watching channel", c) for c in watched if c not in listed]
    token = config.slack_bot_token.get_secret_value() if config.slack_bot_token else ""
    probe = SlackProbe(token, config.slack_api_url)
    answer = await probe.token() if token else Answer(False, "SLACK_BOT_TOKEN is not set")
    report.add(OK if answer.ok else FAIL, "slack token", answer.detail)
    if not config.approval_channel:
        report.add(
            SKIP, "approval channel", "DPOR_APPROVAL_CHANNEL is not set: cards go where /dpor set is run"
        )
    for name, channel in channels:
        if not answer.ok:
            report.add(SKIP, name, f"{channel}: needs a working SLACK_BOT_TOKEN")
            continue
        member = await probe.membership(channel)
        report.add(OK if member.ok else FAIL, name, member.detail)


async def _providers(config: Settings, db: Database, report: Report) -> None:
    """Each provider in use (DPOR_PROVIDER and those subscriptions name) can be built, and read where it can
    be without changing anything."""
    async with db.read() as session:
        named = await providers_named(session)
        subs = await all_subscriptions(session)
    providers = Providers(config, db, build_default=False)
    for name in dict.fromkeys([config.provider, *named]):
        label = f"provider {name}"
        try:
            provider = providers.get(name)
        except ConfigError as exc:
            report.add(FAIL, label, str(exc))
            continue
        if name == "ledger":
            report.add(OK, label, "the partner of record is the database's own: nothing to ask")
        elif name == "webhook":
            host = getattr(provider, "host", "?")
            report.add(
                OK,
                label,
                f"DPOR_WEBHOOK_URL ({host}) and DPOR_WEBHOOK_SECRET are set; no request is sent "
                "(a receiver is told of changes, never asked what it holds)",
            )
        else:
            await _read(report, label, provider, [s for s in subs if (s.provider or config.provider) == name])


async def _read(report: Report, label: str, provider: PartnerProvider, using: list[Subscription]) -> None:
    """Read what one subscription carries, for each identity the provider signs in as (a read changes
    nothing): the credentials work and reach the service."""
    if not using:
        report.add(SKIP, label, "no subscription uses it, so there is nothing to read with")
        return
    groups: dict[object, list[Subscription]] = {}
    identity_of = getattr(provider, "identity", None)
    for sub in using:
        identity = identity_of(sub.id) if identity_of is not None else None
        key = (identity.tenant_id, identity.client_id) if identity is not None else None
        groups.setdefault(key, []).append(sub)
    for subs in groups.values():
        sub = subs[0]
        others = f" (and {len(subs) - 1} more with the same identity)" if len(subs) > 1 else ""
        try:
            state = await provider.current(sub.id)
        except CannotRead as exc:
            report.add(SKIP, label, f"subscription {sub.id}: {exc.message}")
            continue
        except ProviderError as exc:
            report.add(FAIL, label, f"subscription {sub.id}: {exc.message}")
            continue
        who = state.identity.get("client_id") or state.identity.get("credential")
        signed_in = f", signed in as {who}" if who else ""
        report.add(
            OK,
            label,
            f"subscription {sub.id} carries partner {state.partner_id or 'none'}{signed_in}{others}",
        )


async def _audit(config: Settings, db: Database, report: Report) -> None:
    """The chain verifies with the audit key (and extends its newest checkpoint); where its head is now.
    The key is looked for as `serve` does, but never created (bot.audit_keys)."""
    try:
        key = await asyncio.to_thread(audit_keys.resolve, config, db.url, create=False)
    except ConfigError as exc:  # a key file that cannot be read, or a key too short
        key = str(exc)
    async with db.read() as session:
        head = await chain.tip(session)
        last = await checkpoint_table.latest(session)
    if isinstance(key, str):
        path = audit_keys.key_file(db.url)
        if head is None and path is not None and not await asyncio.to_thread(path.exists):
            report.add(
                SKIP, "audit chain", "no events and no key file yet: the bot creates the key when it starts"
            )
        else:
            report.add(FAIL, "audit chain", key)
        return
    published = [audit.Checkpoint(last.seq, last.hash, chain.iso(last.at))] if last is not None else []
    result = await audit.verify(db, key.secret, published)
    if result.broken_seq is not None:
        report.add(FAIL, "audit chain", f"broken at event {result.broken_seq}: {result.problem}")
    elif head is None:
        report.add(OK, "audit chain", f"no events yet; key id {key.id} ({key.source})")
    else:
        report.add(
            OK,
            "audit chain",
            f"intact: {result.events} event{'s' if result.events != 1 else ''} keyed with key id {key.id} "
            f"({key.source}); head: event {head.seq}, hash {head.hash}",
        )
    if result.forged:
        report.add(FAIL, "audit pending", audit.forged_text(result.forged))
    if last is None:
        report.add(
            SKIP, "audit checkpoint", "none taken yet (one follows each applied change, and one a day)"
        )
    elif result.contradicted is not None:
        report.add(FAIL, "audit checkpoint", f"{result.contradicted}: {result.contradiction}")
    else:
        report.add(OK, "audit checkpoint", f"the newest: event {last.seq} at {when(last.at)} ({last.reason})")
