"""The operator's CLI: `doctor` against the Slack stand-in, `--version`, `requests show` and `cancel`,
`partners remove` and `subscriptions remove`, and how failures read at the CLI (every bad variable at
once, the database named by its variable, CLI commands rather than /dpor ones, a quiet `reconcile`)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from bot import checkpoints, cli, clicks, directory, lifecycle, watches
from bot.errors import person
from bot.policy import Policy
from bot.providers import PartnerState, ProviderError
from bot.settings import ConfigError, load_settings
from sandbox.standin import SlackStandin
from storage.db import Database
from storage.migrate import HEAD
from storage.models import AuditEvent, ChangeRequest, ChannelWatch, OutboxMessage, Partner, RoleAssignment
from storage.models import Subscription as SubscriptionRow
from tests import processes

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
AUDIT_KEY = "doctor-test-audit-key-" + "0" * 42
TOKEN = "xoxb-doctor-test-token"
TEAM = "T0DPOR"
SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
PARTNER = "4977985"
ADMIN, OWNER = "U0ADMIN", "U0OWNER"
APPROVALS, NOTIFY, WATCHING = "C0APPROVALS", "C0NOTIFY", "C0WATCHING"
POLICY = Policy(approval_channel=APPROVALS, notify_channels=(NOTIFY,))


def env_for(database_url: str | None, **extra: str) -> dict[str, str]:
    """The test runner's environment without any bot setting, plus the audit key and what a test names."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DPOR_", "SLACK_", "AZURE_")) and key not in ("DATABASE_URL", "PORT")
    }
    env["PYTHONPATH"] = str(REPO)
    env["DPOR_AUDIT_KEY"] = AUDIT_KEY
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


async def dpor_bot(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    return await processes.cli(env, cwd, *args)


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), err
    assert "Traceback" not in err
    return lines


def checks(out: str) -> list[tuple[str, str, str]]:
    """`doctor`'s lines as (status, name, detail)."""
    found = []
    for line in out.strip().splitlines():
        status, name, detail = line[:4].strip(), line[6:22].strip(), line[24:]
        assert status in ("ok", "FAIL", "skip"), line
        found.append((status, name, detail))
    return found


def line_of(found: list[tuple[str, str, str]], name: str) -> tuple[str, str]:
    matching = [(status, detail) for status, check, detail in found if check == name]
    assert len(matching) == 1, (name, found)
    return matching[0]


@pytest.fixture
async def keyed(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, audit_key=AUDIT_KEY.encode())
    yield database
    await database.dispose()


async def seed(db: Database) -> None:
    await directory.upsert_subscriptions(
        db,
        [
            directory.SubscriptionRow(SUB, "Production", "prod"),
            directory.SubscriptionRow(OTHER_SUB, "Staging"),
        ],
        actor="cli:seed",
    )
    await directory.add_partner(db, PARTNER, "Contoso Ltd", actor="cli:seed")
    await directory.grant_role(db, ADMIN, "admin", SUB, actor="cli:seed")
    await directory.grant_role(db, OWNER, "owner", SUB, actor="cli:seed")
    await directory.grant_role(db, OWNER, "owner", OTHER_SUB, actor="cli:seed")


async def open_request(db: Database) -> int:
    req = await lifecycle.create_request(
        db, POLICY, team_id=TEAM, user_id=ADMIN, subscription=SUB, partner=PARTNER, reason="move to Contoso"
    )
    return req.id


async def rows(db: Database, statement: Any) -> list[Any]:
    async with db.read() as session:
        return list((await session.execute(statement)).all())


# --- --version and help ------------------------------------------------------------------------------


def test_version_is_the_packages() -> None:
    result = CliRunner().invoke(cli.cli, ["--version"], prog_name="dpor-bot")
    assert result.exit_code == 0
    assert result.output == f"dpor-bot {version('dpor-bot')}\n"


@pytest.mark.parametrize(
    "command",
    [
        ["doctor"],
        ["requests", "show"],
        ["requests", "cancel"],
        ["partners", "remove"],
        ["subscriptions", "remove"],
    ],
)
def test_the_new_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli.cli, [*command, "--help"], prog_name="dpor-bot")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: dpor-bot {' '.join(command)} ")


# --- doctor ------------------------------------------------------------------------------------------


@pytest.fixture
async def slack() -> AsyncIterator[SlackStandin]:
    async with SlackStandin(team_id=TEAM, bot_token=TOKEN) as standin:
        yield standin


def slack_env(database_url: str, slack: SlackStandin, **extra: str) -> dict[str, str]:
    return env_for(
        database_url,
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_API_URL=slack.base_url,
        DPOR_APPROVAL_CHANNEL=APPROVALS,
        DPOR_NOTIFY_CHANNELS=NOTIFY,
        **extra,
    )


async def test_doctor_fails_the_line_of_a_channel_the_bot_is_not_in(
    keyed: Database, database_url: str, slack: SlackStandin, tmp_path: Path
) -> None:
    await seed(keyed)
    await open_request(keyed)
    await watches.watch(keyed, team_id=TEAM, channel_id=WATCHING, subscription=SUB, user_id=OWNER)
    point = await checkpoints.daily(keyed, None)
    assert point is not None
    env = slack_env(database_url, slack)

    code, out, err = await dpor_bot(env, tmp_path, "doctor")
    assert (code, err) == (0, ""), out + err
    found = checks(out)
    assert {status for status, _, _ in found} <= {"ok", "skip"}
    assert line_of(found, "database")[1].startswith("DATABASE_URL=")
    assert line_of(found, "schema") == ("ok", f"at revision {HEAD}, the newest")
    assert line_of(found, "slack token") == ("ok", f"the bot @dpor (UDPORBOT) in workspace DPOR ({TEAM})")
    assert line_of(found, "approval channel") == ("ok", f"#c0approvals ({APPROVALS}): the bot is a member")
    assert line_of(found, "notify channel") == ("ok", f"#c0notify ({NOTIFY}): the bot is a member")
    assert line_of(found, "watching channel") == ("ok", f"#c0watching ({WATCHING}): the bot is a member")
    assert line_of(found, "provider ledger")[0] == "ok"
    status, detail = line_of(found, "audit chain")
    async with keyed.read() as session:
        head = (
            await session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()))
        ).first()
    assert status == "ok" and detail.endswith(f"head: event {head.seq}, hash {head.hash}")
    status, detail = line_of(found, "audit checkpoint")
    assert (
        status == "ok"
        and detail.startswith(f"the newest: event {point.seq} at ")
        and detail.endswith("(daily)")
    )
    assert len(slack.calls_to("conversations.info")) == 3
    assert not slack.calls_to("chat.postMessage"), "doctor posts nothing"

    slack.leave(NOTIFY)
    code, out, err = await dpor_bot(env, tmp_path, "doctor")
    assert code == 1
    found = checks(out)
    assert line_of(found, "notify channel") == (
        "FAIL",
        f"#c0notify ({NOTIFY}): the bot is not a member (run `/invite @dpor` in the channel)",
    )
    assert line_of(found, "approval channel")[0] == "ok"
    assert [status for status, _, _ in found].count("FAIL") == 1
    assert error_lines(err) == [f"error: 1 of {len(found)} checks failed"]
    assert TOKEN not in out + err and AUDIT_KEY not in out + err


async def test_doctor_fails_a_revoked_token_and_skips_the_channels(
    keyed: Database, database_url: str, slack: SlackStandin, tmp_path: Path
) -> None:
    await seed(keyed)
    slack.fail("auth.test", status=200, error="token_revoked")
    code, out, _ = await dpor_bot(slack_env(database_url, slack), tmp_path, "doctor")
    assert code == 1
    found = checks(out)
    assert line_of(found, "slack token") == (
        "FAIL",
        "Slack refused SLACK_BOT_TOKEN (auth.test: token_revoked)",
    )
    assert line_of(found, "approval channel") == ("skip", f"{APPROVALS}: needs a working SLACK_BOT_TOKEN")
    assert not slack.calls_to("conversations.info")


async def test_doctor_names_an_edited_audit_event_and_a_provider_it_cannot_build(
    keyed: Database, database_url: str, slack: SlackStandin, tmp_path: Path
) -> None:
    await seed(keyed)
    async with keyed.write(serial=False) as session:
        await session.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(actor="cli:someone-else"))
    env = slack_env(database_url, slack, DPOR_PROVIDER="webhook")
    code, out, _ = await dpor_bot(env, tmp_path, "doctor")
    assert code == 1
    found = checks(out)
    status, detail = line_of(found, "audit chain")
    assert status == "FAIL" and detail.startswith("broken at event 2: ")
    assert line_of(found, "provider webhook") == (
        "FAIL",
        "DPOR_WEBHOOK_URL: the webhook provider needs the receiver's URL",
    )


async def test_doctor_sends_the_webhook_receiver_nothing(
    keyed: Database, database_url: str, slack: SlackStandin, tmp_path: Path
) -> None:
    await seed(keyed)
    hook = f"http://127.0.0.1:{processes.free_port()}/hook?token=hook-secret"  # nothing listens there
    env = slack_env(
        database_url, slack, DPOR_PROVIDER="webhook", DPOR_WEBHOOK_URL=hook, DPOR_WEBHOOK_SECRET="s" * 32
    )
    code, out, err = await dpor_bot(env, tmp_path, "doctor")
    assert code == 0, out + err
    status, detail = line_of(checks(out), "provider webhook")
    assert status == "ok" and "no request is sent" in detail
    assert "hook-secret" not in out and "s" * 32 not in out


async def test_doctor_names_an_unreachable_database_by_its_variable_without_its_password(
    tmp_path: Path,
) -> None:
    url = "postgresql://dpor:s3cret-pw@127.0.0.1:1/dpor"
    code, out, err = await dpor_bot(env_for(url), tmp_path, "doctor")
    assert code == 1
    found = checks(out)
    status, detail = line_of(found, "database")
    assert status == "FAIL"
    assert detail.startswith("DATABASE_URL=postgresql+asyncpg://dpor:***@127.0.0.1:1/dpor: cannot reach it: ")
    assert line_of(found, "schema")[0] == line_of(found, "audit chain")[0] == "skip"
    assert "s3cret-pw" not in out + err

    # The other commands name it the same way: by its variable, masked.
    code, _, err = await dpor_bot(env_for(url), tmp_path, "subscriptions", "list")
    [line] = error_lines(err)
    assert code == 1
    assert line.startswith(
        "error: cannot reach the database at postgresql+asyncpg://dpor:***@127.0.0.1:1/dpor: "
    )
    assert line.endswith(" (check DATABASE_URL)") and "s3cret-pw" not in line


async def test_doctor_creates_no_database(tmp_path: Path) -> None:
    code, out, _ = await dpor_bot(env_for(None), tmp_path, "doctor")
    assert code == 1
    status, detail = line_of(checks(out), "database")
    assert status == "FAIL" and "no such file yet" in detail
    assert os.listdir(tmp_path) == [], "doctor must not create the database or its key"


# --- every bad variable at once ----------------------------------------------------------------------

BAD = {
    "DPOR_REQUIRED_APPROVALS": "0",
    "PORT": "http",
    "DPOR_REQUEST_TTL": "soon",
    "DATABASE_URL": "mysql://dpor:db-secret@db/dpor",
    "DPOR_AUDIT_KEY": "too-short-key-secret",
}


def test_load_settings_names_every_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BAD.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert sorted(line.split(":", 1)[0] for line in lines) == sorted(BAD)
    assert "PORT: expected a port number from 1 to 65535 (got 'http')" in lines
    assert "db-secret" not in str(caught.value) and "too-short-key-secret" not in str(caught.value)


async def test_the_cli_reports_every_bad_variable_one_per_line(tmp_path: Path) -> None:
    env = {**env_for(None), **BAD}
    code, out, err = await dpor_bot(env, tmp_path, "roles", "list")
    assert (code, out) == (1, "")
    lines = error_lines(err)
    assert sorted(line.removeprefix("error: ").split(":", 1)[0] for line in lines) == sorted(BAD)
    assert "db-secret" not in err and "too-short-key-secret" not in err

    code, out, err = await dpor_bot(env, tmp_path, "doctor")
    assert code == 1
    found = checks(out)
    assert [name for _, name, _ in found] == ["settings"] * len(BAD)
    assert "db-secret" not in out and "too-short-key-secret" not in out


# --- requests show and cancel (in this process: quicker than a subprocess each) -------------------------


def invoke(database_url: str, *args: str) -> tuple[int, str, str]:
    """`dpor-bot ARGS...` in this process: exit status, stdout, stderr."""
    env = {"DATABASE_URL": database_url, "DPOR_AUDIT_KEY": AUDIT_KEY}
    result = CliRunner().invoke(cli.cli, list(args), env=env, prog_name="dpor-bot")
    return result.exit_code, result.stdout, result.stderr


def keyed_run(database_url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    async def go() -> T:
        database = Database(database_url, audit_key=AUDIT_KEY.encode())
        try:
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(go())


def select_all(database_url: str, statement: Any) -> list[Any]:
    return keyed_run(database_url, lambda db: rows(db, statement))


def test_requests_show_and_cancel(database_url: str) -> None:
    async def setup(db: Database) -> tuple[int, int]:
        await seed(db)
        rejected = await open_request(db)
        await clicks.reject(db, POLICY, request_id=rejected, team_id=TEAM, user_id=OWNER)
        return rejected, await open_request(db)

    rejected, pending = keyed_run(database_url, setup)

    code, out, err = invoke(database_url, "requests", "show", str(rejected))
    assert code == 0, err
    assert f"request       #{rejected}\nstatus        rejected\n" in out
    assert f"subscription  Production (prod) {SUB}\n" in out
    assert f"partner       {PARTNER} (Contoso Ltd)\n" in out
    assert "reason        move to Contoso\n" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(OWNER)] == [[OWNER, "reject"]]
    assert [line.split()[3] for line in out.splitlines() if line[:1].isdigit()] == [
        "request.created",
        "request.rejected",
    ]

    assert invoke(database_url, "requests", "cancel", f"#{pending}", "--reason", "wrong partner") == (
        0,
        f"cancelled request #{pending}\n",
        "",
    )
    [(req, event)] = select_all(
        database_url,
        select(ChangeRequest, AuditEvent)
        .join(AuditEvent, AuditEvent.request_id == ChangeRequest.id)
        .where(ChangeRequest.id == pending, AuditEvent.action == "request.cancelled"),
    )
    assert req.status == "cancelled" and req.decided_by.startswith("cli:")
    assert event.actor.startswith("cli:") and event.data == {"reason": "wrong partner"}
    told = select_all(database_url, select(OutboxMessage.kind, OutboxMessage.payload))
    assert ("dm", {"user_id": ADMIN, "request_id": pending, "event": "cancelled"}) in told
    code, out, _ = invoke(database_url, "requests", "show", str(pending))
    assert "request.cancelled" in out and '{"reason": "wrong partner"}' in out

    code, _, err = invoke(database_url, "requests", "cancel", str(pending), "--reason", "again")
    assert code == 1
    assert err.startswith(f"error: Request #{pending} was already cancelled by an operator (cli:")
    # The decision's time as a terminal shows it: the UTC fallback of Slack's date token, not the token.
    assert "<!date" not in err and re.search(r" at \d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC\.$", err.strip())
    # The bot's refusals name CLI commands at the CLI, not /dpor ones.
    assert invoke(database_url, "requests", "cancel", "999", "--reason", "x") == (
        1,
        "",
        "error: There is no request #999. `dpor-bot requests list --status pending` lists the open ones.\n",
    )
    assert invoke(database_url, "requests", "show", "abc")[2] == (
        "error: `abc` is not a request number, such as `42`.\n"
    )
    code, _, err = invoke(database_url, "requests", "cancel", str(pending))
    assert code == 2 and "Missing option '--reason'" in err
    assert invoke(database_url, "audit", "verify")[0] == 0


def test_an_operator_cancel_needs_a_reason(database_url: str) -> None:
    async def setup(db: Database) -> int:
        await seed(db)
        return await open_request(db)

    rid = keyed_run(database_url, setup)
    assert invoke(database_url, "requests", "cancel", str(rid), "--reason", " ") == (
        1,
        "",
        "error: Say why the request is cancelled: the reason is recorded in the audit log.\n",
    )
    assert select_all(database_url, select(ChangeRequest.status)) == [("pending",)]


def test_an_operator_is_named_as_such_where_slack_shows_a_person() -> None:
    assert person("cli:alice") == "an operator (cli:alice)"
    assert person("U0OWNER") == "<@U0OWNER>"
    assert person(None) == person("dpor-bot") == "dpor-bot"


# --- partners remove and subscriptions remove --------------------------------------------------------


def test_removals_are_refused_while_a_request_needs_them(database_url: str) -> None:
    async def setup(db: Database) -> int:
        await seed(db)
        return await open_request(db)

    rid = keyed_run(database_url, setup)
    cancel = f"`dpor-bot requests cancel {rid} --reason TEXT`"
    assert invoke(database_url, "partners", "remove", PARTNER) == (
        1,
        "",
        f"error: Open request #{rid} names partner {PARTNER} (Contoso Ltd), and approvers read its name from "
        f"the directory: decide or cancel it ({cancel}) first.\n",
    )
    code, _, err = invoke(database_url, "subscriptions", "remove", SUB)
    assert (
        code == 1 and err.startswith(f"error: Request #{rid} for Production is still open") and cancel in err
    )

    assert invoke(database_url, "requests", "cancel", str(rid), "--reason", "done")[0] == 0
    assert invoke(database_url, "partners", "remove", PARTNER) == (
        0,
        f"removed partner {PARTNER} (Contoso Ltd)\n",
        "",
    )
    assert select_all(database_url, select(Partner.partner_id)) == []
    assert invoke(database_url, "partners", "remove", PARTNER)[2] == (
        f"error: Partner `{PARTNER}` is not in the partner directory.\n"
    )

    # A subscription with history stays: its requests and their audit events refer to it.
    assert invoke(database_url, "subscriptions", "remove", SUB)[2] == (
        f"error: Subscription Production (`{SUB}`) has 1 request on record, which refer to it: it stays, so "
        "that its history stays whole.\n"
    )
    assert select_all(database_url, select(SubscriptionRow.id).where(SubscriptionRow.id == SUB)) == [(SUB,)]

    [(event,)] = select_all(database_url, select(AuditEvent).where(AuditEvent.action == "partner.removed"))
    assert event.actor.startswith("cli:") and event.data == {"partner_id": PARTNER, "name": "Contoso Ltd"}
    assert invoke(database_url, "audit", "verify")[0] == 0


def test_a_subscription_without_requests_is_removed_with_its_roles_and_watches(database_url: str) -> None:
    async def setup(db: Database) -> None:
        await seed(db)
        await watches.watch(db, team_id=TEAM, channel_id=WATCHING, subscription=OTHER_SUB, user_id=OWNER)

    keyed_run(database_url, setup)
    assert invoke(database_url, "subscriptions", "remove", OTHER_SUB.upper()) == (
        0,
        f"removed subscription {OTHER_SUB} (Staging) with 1 role and 1 channel watch on it\n",
        "",
    )
    assert select_all(database_url, select(SubscriptionRow.id)) == [(SUB,)]
    assert select_all(database_url, select(RoleAssignment.id).where(RoleAssignment.scope == OTHER_SUB)) == []
    assert select_all(database_url, select(ChannelWatch.channel_id)) == []
    [(event,)] = select_all(
        database_url, select(AuditEvent).where(AuditEvent.action == "subscription.removed")
    )
    assert event.subscription_id == OTHER_SUB and event.actor.startswith("cli:")
    assert event.data == {
        "name": "Staging",
        "alias": None,
        "provider": None,
        "partner_id": None,
        "roles": [{"user_id": OWNER, "role": "owner"}],
        "watches": [WATCHING],
    }

    assert invoke(database_url, "subscriptions", "remove", OTHER_SUB)[2] == (
        f"error: Subscription `{OTHER_SUB}` is not known to dpor-bot.\n"
    )
    code, _, err = invoke(database_url, "subscriptions", "remove", "prod")
    assert code == 1 and err.startswith("error: `prod` is not a subscription ID")
    assert invoke(database_url, "audit", "verify")[0] == 0


def test_the_cli_names_its_own_commands_in_the_bots_refusals(sqlite_url: str) -> None:
    keyed_run(sqlite_url, seed)
    code, _, err = invoke(sqlite_url, "roles", "list", "--subscription", "no-such-alias")
    assert (code, err) == (
        1,
        "error: No subscription has the ID or alias `no-such-alias`. `dpor-bot subscriptions list` shows the "
        "subscriptions.\n",
    )


# --- reconcile: quiet by default ---------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("azure", "dpor", "dpor.providers")}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


class _NoisyAzure:
    """Fails to sign in as azure.identity does: a many-line credential dump through the `azure.*` loggers."""

    name = "azure"

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        raise AssertionError("reconcile never applies")

    async def current(self, subscription_id: str) -> PartnerState:
        logging.getLogger("azure.identity.aio._credentials.default").warning(
            "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
            "Attempted credentials:\n\tEnvironmentCredential: authentication unavailable."
        )
        logging.getLogger("dpor.providers.azure").warning(
            "azure: subscription %s: could not sign in", subscription_id
        )
        raise ProviderError("the default Azure credential could not sign in")


def test_reconcile_is_quiet_unless_verbose(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, restore_logging: None
) -> None:
    from bot import providers

    keyed_run(
        sqlite_url,
        lambda db: directory.upsert_subscriptions(
            db, [directory.SubscriptionRow(SUB, "Production", provider="azure")], actor="cli:seed"
        ),
    )
    built = providers._build
    monkeypatch.setattr(
        providers, "_build", lambda name, *a: _NoisyAzure() if name == "azure" else built(name, *a)
    )
    caplog.set_level(logging.DEBUG)

    code, out, err = invoke(sqlite_url, "reconcile")
    assert code == 1 and "could not be read" in out
    assert err == "error: 1 subscriptions could not be read; see DETAIL above\n"
    assert not [r for r in caplog.records if r.name.startswith(("azure", "dpor.providers"))]

    code, _, _ = invoke(sqlite_url, "reconcile", "--verbose")
    assert code == 1
    shown = [r.getMessage() for r in caplog.records if r.name.startswith("azure")]
    assert shown and "Attempted credentials" in shown[0]
