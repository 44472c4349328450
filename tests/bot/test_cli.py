"""The operator CLI end to end: `python -m bot.cli` as a subprocess against a real database."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import make_url

from bot import cli
from bot.cli.command import actor
from bot.settings import normalise_database_url
from storage.models import (
    AuditEvent,
    AuditPending,
    ChangeRequest,
    Partner,
    RoleAssignment,
    Subscription,
    utcnow,
)
from tests.conftest import PG_ADMIN_URL, _pg_admin
from tests.processes import change, clean_env, dpor_bot, ok, query, refused, table_rows, usage_error

SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
EXPORT_HEADER = "seq,at,actor,action,request_id,subscription_id,data,prev_hash,hash"
COMMANDS = [
    [],
    ["serve"],
    ["socket"],
    ["db"],
    ["db", "upgrade"],
    ["subscriptions"],
    ["subscriptions", "add"],
    ["subscriptions", "import"],
    ["subscriptions", "list"],
    ["partners"],
    ["partners", "add"],
    ["partners", "list"],
    ["roles"],
    ["roles", "grant"],
    ["roles", "revoke"],
    ["roles", "list"],
    ["requests"],
    ["requests", "list"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "export"],
    ["audit", "checkpoints"],
    ["audit", "checkpoint"],
    ["audit", "rekey"],
]


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(cli.cli, [*command, "--help"], prog_name="dpor-bot")
        assert result.exit_code == 0, (command, result.output)
        assert result.output.startswith(f"Usage: {' '.join(['dpor-bot', *command])} "), result.output


def test_the_installed_console_script_runs(tmp_path: Path) -> None:
    script = shutil.which("dpor-bot", path=str(Path(sys.executable).parent))
    assert script is not None, "dpor-bot is not installed next to this Python: pip install -e ."
    result = subprocess.run(
        [script, "--help"], cwd=tmp_path, env=clean_env(None), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: dpor-bot [OPTIONS] COMMAND [ARGS]...")
    for command in ("serve", "socket", "db", "subscriptions", "partners", "roles", "requests", "audit"):
        assert f"\n  {command} " in result.stdout
    assert list(tmp_path.iterdir()) == [], "--help must not create a database"


def test_without_database_url_uses_an_sqlite_file_in_the_working_directory(tmp_path: Path) -> None:
    assert "no subscriptions" in ok(dpor_bot("subscriptions", "list", url=None, cwd=tmp_path))
    assert (tmp_path / "dpor-bot.db").is_file()

    ok(dpor_bot("subscriptions", "add", SUB, "--name", "Prod", url=None, cwd=tmp_path))
    rows = query(
        f"sqlite+aiosqlite:///{tmp_path / 'dpor-bot.db'}", select(Subscription.id, Subscription.name)
    )
    assert rows == [(SUB, "Prod")]


def test_db_upgrade(database_url: str, tmp_path: Path) -> None:
    assert (
        ok(dpor_bot("db", "upgrade", url=database_url, cwd=tmp_path)) == "database is at the newest schema\n"
    )

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    out = ok(dpor_bot("db", "upgrade", url=fresh, cwd=tmp_path))
    assert out == "database upgraded to the newest schema\n"
    assert query(normalise_database_url(fresh), select(func.count()).select_from(Subscription)) == [(0,)]


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database with no tables at all, as an operator's new server would have."""
    if not PG_ADMIN_URL:
        pytest.skip("PostgreSQL tests need DPOR_TEST_DATABASE_URL")
    name = f"dpor_cli_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(PG_ADMIN_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", ""))
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgresql_without_schema_refuses_until_db_upgrade(empty_pg_url: str, tmp_path: Path) -> None:
    line = refused(dpor_bot("subscriptions", "list", url=empty_pg_url, cwd=tmp_path))
    assert line == "error: the database schema is not current: run `dpor-bot db upgrade`"

    assert ok(dpor_bot("db", "upgrade", url=empty_pg_url, cwd=tmp_path)) == (
        "database upgraded to the newest schema\n"
    )
    assert "no subscriptions" in ok(dpor_bot("subscriptions", "list", url=empty_pg_url, cwd=tmp_path))


def test_subscriptions_add_and_list(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    assert ok(run("subscriptions", "add", SUB.upper(), "--name", "Prod EU", "--alias", "prod-eu")) == (
        f"added subscription {SUB}\n"
    )
    assert ok(run("subscriptions", "add", SUB, "--name", "Prod EU", "--alias", "prod-eu")) == (
        f"unchanged: subscription {SUB}\n"
    )
    ok(run("subscriptions", "add", OTHER_SUB, "--name", "Dev"))
    assert ok(run("subscriptions", "add", OTHER_SUB, "--name", "Dev West")) == (
        f"updated subscription {OTHER_SUB}\n"
    )

    out = ok(run("subscriptions", "list"))
    assert out.splitlines()[0].split() == ["ID", "ALIAS", "PARTNER", "NAME"]
    assert table_rows(out) == [[OTHER_SUB, "-", "-", "Dev", "West"], [SUB, "prod-eu", "-", "Prod", "EU"]]

    line = refused(run("subscriptions", "add", "not-a-guid", "--name", "X"))
    assert "is not a subscription ID" in line
    line = refused(run("subscriptions", "add", OTHER_SUB, "--name", "Dev", "--alias", "prod-eu"))
    assert "prod-eu" in line and SUB in line
    usage_error(run("subscriptions", "add", SUB))  # --name is required

    rows = query(database_url, select(Subscription.id, Subscription.name, Subscription.alias).order_by("id"))
    assert rows == [(SUB, "Prod EU", "prod-eu"), (OTHER_SUB, "Dev West", None)]


def test_subscriptions_import_of_a_missing_file_is_one_line(sqlite_url: str, tmp_path: Path) -> None:
    line = refused(dpor_bot("subscriptions", "import", "missing.csv", url=sqlite_url, cwd=tmp_path))
    assert line == "error: cannot read missing.csv: No such file or directory"


def test_partners_add_and_list(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    assert "no partners" in ok(run("partners", "list"))
    assert ok(run("partners", "add", "4977985", "--name", "Contoso")) == "saved partner 4977985\n"
    assert "unchanged" in ok(run("partners", "add", "4977985", "--name", "Contoso"))
    ok(run("partners", "add", "4977985", "--name", "Contoso Ltd"))
    ok(run("partners", "add", "123456", "--name", "Fabrikam"))

    out = ok(run("partners", "list"))
    assert out.splitlines()[0].split() == ["PARTNER_ID", "NAME", "PRINCIPALS"]
    assert table_rows(out) == [["123456", "Fabrikam", "-"], ["4977985", "Contoso", "Ltd", "-"]]

    assert "is not a partner ID" in refused(run("partners", "add", "12345", "--name", "Too short"))
    rows = query(database_url, select(Partner.partner_id, Partner.name).order_by(Partner.partner_id))
    assert rows == [("123456", "Fabrikam"), ("4977985", "Contoso Ltd")]


def test_roles_grant_list_revoke_and_their_audit_events(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    ok(run("subscriptions", "add", SUB, "--name", "Prod", "--alias", "prod"))
    ok(run("subscriptions", "add", OTHER_SUB, "--name", "Dev", "--alias", "dev"))
    assert ok(run("roles", "grant", "<@U0OWNER|alice>", "owner")) == "granted owner to U0OWNER on *\n"
    assert ok(run("roles", "grant", "<@W0ADMIN>", "ADMIN", "--subscription", "prod")) == (
        f"granted admin to W0ADMIN on {SUB}\n"
    )
    ok(run("roles", "grant", "U0DEV", "admin", "--subscription", OTHER_SUB))
    assert "unchanged" in ok(run("roles", "grant", "U0OWNER", "owner"))

    everyone = table_rows(ok(run("roles", "list")))
    assert sorted(row[:3] for row in everyone) == [
        ["U0DEV", "admin", OTHER_SUB],
        ["U0OWNER", "owner", "*"],
        ["W0ADMIN", "admin", SUB],
    ]
    login = actor()
    assert {row[3] for row in everyone} == {login}
    prod = table_rows(ok(run("roles", "list", "--subscription", "prod")))
    assert sorted(row[:3] for row in prod) == [["U0OWNER", "owner", "*"], ["W0ADMIN", "admin", SUB]]

    # The only owner: --force (tests/bot/test_guardrails.py shows the refusal without it).
    assert ok(run("roles", "revoke", "U0OWNER", "owner", "--force")) == "revoked owner from U0OWNER on *\n"
    assert "does not hold owner" in ok(run("roles", "revoke", "U0OWNER", "owner"))
    ok(run("roles", "revoke", "W0ADMIN", "admin", "--subscription", SUB))
    assert query(database_url, select(RoleAssignment.user_id, RoleAssignment.role, RoleAssignment.scope)) == [
        ("U0DEV", "admin", OTHER_SUB)
    ]

    events = [json.loads(line) for line in ok(run("audit", "export")).splitlines()]
    roles = [(e["action"], e["actor"], e["data"]["user_id"], e["data"]["scope"]) for e in events[2:]]
    assert roles == [
        ("role.granted", login, "U0OWNER", "*"),
        ("role.granted", login, "W0ADMIN", SUB),
        ("role.granted", login, "U0DEV", OTHER_SUB),
        ("role.revoked", login, "U0OWNER", "*"),
        ("role.revoked", login, "W0ADMIN", SUB),
    ]
    assert events[4]["subscription_id"] == OTHER_SUB


def test_roles_refusals(sqlite_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=sqlite_url, cwd=tmp_path)

    for bad in ("u0lower", "<@>", "C0CHANNEL", "U1", "<@U0X|a"):
        assert "is not a Slack user ID" in refused(run("roles", "grant", bad, "owner"))
    assert "prod-nowhere" in refused(run("roles", "grant", "U0X", "owner", "--subscription", "prod-nowhere"))
    assert "prod-nowhere" in refused(run("roles", "list", "--subscription", "prod-nowhere"))
    assert "'boss' is not one of" in usage_error(run("roles", "grant", "U0X", "boss"))
    assert query(sqlite_url, select(func.count()).select_from(RoleAssignment)) == [(0,)]


def test_requests_list(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    assert ok(run("requests", "list")) == "no requests\n"
    ok(run("subscriptions", "add", SUB, "--name", "Prod"))
    ok(run("subscriptions", "add", OTHER_SUB, "--name", "Dev"))
    now = utcnow()

    def request(subscription: str, status: str) -> ChangeRequest:
        return ChangeRequest(
            team_id="T1",
            subscription_id=subscription,
            partner_id="4977985",
            requester_id="U0ADMIN",
            status=status,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(hours=72),
        )

    change(database_url, request(SUB, "rejected"))
    change(database_url, request(SUB, "pending"))
    change(database_url, request(OTHER_SUB, "applied"))

    rows = table_rows(ok(run("requests", "list")))
    assert [row[:4] for row in rows] == [
        ["3", "applied", OTHER_SUB, "4977985"],
        ["2", "pending", SUB, "4977985"],
        ["1", "rejected", SUB, "4977985"],
    ]
    assert [row[:2] for row in table_rows(ok(run("requests", "list", "--status", "pending")))] == [
        ["2", "pending"]
    ]
    assert ok(run("requests", "list", "--status", "expired")) == "no requests with status expired\n"
    assert "'done' is not one of 'pending'" in usage_error(run("requests", "list", "--status", "done"))


def test_audit_verify_names_the_edited_event(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    assert ok(run("audit", "verify")) == "audit chain intact: 0 events\n"
    ok(run("subscriptions", "add", SUB, "--name", "Prod"))
    ok(run("partners", "add", "4977985", "--name", "Contoso"))
    ok(run("roles", "grant", "U0OWNER", "owner"))
    assert ok(run("audit", "verify")) == "audit chain intact: 3 events\n"

    change(
        database_url,
        update(AuditEvent).where(AuditEvent.seq == 2).values(data={"partner_id": "1234566", "name": "Evil"}),
    )
    line = refused(run("audit", "verify"))
    assert line.startswith("error: audit chain broken at event 2: ")
    assert "edited" in line


def test_audit_verify_names_a_row_put_in_audit_pending_by_hand(database_url: str, tmp_path: Path) -> None:
    """A row in audit_pending the bot did not sign (on PostgreSQL the sealer leaves it out of the chain; on
    SQLite nothing of the bot's is ever there): `audit verify` fails naming it, the chain itself intact."""
    ok(dpor_bot("partners", "add", "4977985", "--name", "Contoso", url=database_url, cwd=tmp_path))
    forged = {"at": utcnow(), "actor": "U0OWNER", "action": "request.approved", "request_id": 1, "data": {}}
    change(database_url, insert(AuditPending).values(**forged))
    result = dpor_bot("audit", "verify", url=database_url, cwd=tmp_path)
    assert result.returncode == 1, result
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: audit_pending holds 1 row the bot did not write (id "), line
    assert "broken" not in result.stderr and "Traceback" not in result.stderr
    pending = query(database_url, select(AuditPending.id))
    ids = [str(row[0]) for row in pending]
    answer = dpor_bot("audit", "accept", *ids, url=database_url, cwd=tmp_path)
    if database_url.startswith("sqlite"):  # nothing of the bot's is ever there: refused, nothing chained
        assert "SQLite chains each event as it is written" in refused(answer)
        assert query(database_url, select(AuditPending.id)) == pending
        return
    assert ok(answer) == f"accepted and chained: {ids[0]}\n"  # the operator looked at it: genuine
    assert ok(dpor_bot("audit", "verify", url=database_url, cwd=tmp_path)).startswith("audit chain intact")
    assert "not waiting in audit_pending: 7" in refused(
        dpor_bot("audit", "accept", "7", url=database_url, cwd=tmp_path)
    )


def test_audit_export_csv_and_output_file(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    assert ok(run("audit", "export", "--format", "csv")).splitlines() == [EXPORT_HEADER]
    ok(run("subscriptions", "add", SUB, "--name", "Prod"))
    ok(run("roles", "grant", "U0OWNER", "owner", "--subscription", SUB))

    out = ok(run("audit", "export", "--format", "csv"))
    assert out.splitlines()[0] == EXPORT_HEADER
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["seq"], r["action"], r["subscription_id"], r["request_id"]) for r in rows] == [
        ("1", "subscription.added", SUB, ""),
        ("2", "role.granted", SUB, ""),
    ]
    assert json.loads(rows[1]["data"]) == {"role": "owner", "scope": SUB, "user_id": "U0OWNER"}
    assert rows[1]["prev_hash"] == rows[0]["hash"]

    result = run("audit", "export", "--output", "audit.jsonl")
    assert ok(result) == ""
    assert result.stderr == "exported 2 events to audit.jsonl\n"
    exported = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["hash"] for e in exported] == [r["hash"] for r in rows]

    line = refused(run("audit", "export", "--output", "no/such/dir/audit.csv"))
    assert line.startswith("error: cannot write no/such/dir/audit.csv")
    assert "'xml' is not one of 'jsonl', 'csv'" in usage_error(run("audit", "export", "--format", "xml"))


def test_a_bad_setting_is_one_line_naming_the_variable(sqlite_url: str, tmp_path: Path) -> None:
    result = dpor_bot("roles", "list", url=sqlite_url, cwd=tmp_path, env={"DPOR_REQUIRED_APPROVALS": "0"})
    assert "DPOR_REQUIRED_APPROVALS" in refused(result)

    result = dpor_bot("roles", "list", url="mysql://db/x", cwd=tmp_path)
    assert refused(result).startswith("error: DATABASE_URL: expected sqlite:///")


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://dpor:s3cret-pw@127.0.0.1:1/dpor"
    line = refused(dpor_bot("subscriptions", "list", url=url, cwd=tmp_path))
    assert line.startswith(
        "error: cannot reach the database at postgresql+asyncpg://dpor:***@127.0.0.1:1/dpor"
    )
    assert "s3cret-pw" not in line


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    usage_error(dpor_bot("frobnicate", url=None, cwd=tmp_path))
    usage_error(dpor_bot("partners", "add", "4977985", url=None, cwd=tmp_path))
    usage_error(dpor_bot("roles", "grant", "U0X", url=None, cwd=tmp_path))
    usage_error(dpor_bot("serve", "--port", "0", url=None, cwd=tmp_path))
    assert not (tmp_path / "dpor-bot.db").exists()


def test_serve_and_socket_hand_the_settings_to_the_app(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[tuple[str, Any]] = []

    async def run_http(settings: Any, port: int) -> None:
        calls.append(("http", port))

    async def run_socket(settings: Any) -> None:
        calls.append(("socket", settings.required_approvals))

    monkeypatch.setattr("bot.app.run_http", run_http)
    monkeypatch.setattr("bot.app.run_socket", run_socket)
    for name in ("PORT", "DATABASE_URL", "DPOR_REQUIRED_APPROVALS"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}

    assert runner.invoke(cli.cli, ["serve"], env=env).exit_code == 0
    assert runner.invoke(cli.cli, ["serve"], env={**env, "PORT": "8080"}).exit_code == 0
    assert runner.invoke(cli.cli, ["serve", "--port", "9000"], env={**env, "PORT": "8080"}).exit_code == 0
    result = runner.invoke(cli.cli, ["socket"], env={**env, "DPOR_REQUIRED_APPROVALS": "2"})
    assert result.exit_code == 0
    assert calls == [("http", 3000), ("http", 8080), ("http", 9000), ("socket", 2)]

    result = runner.invoke(cli.cli, ["serve"], env={**env, "PORT": "http"})
    assert result.exit_code == 1
    assert result.output.startswith("error: PORT: expected a port number")
    assert len(calls) == 4


def test_aliases_that_read_as_a_scope_an_id_or_another_alias_are_refused(
    sqlite_url: str, tmp_path: Path
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=sqlite_url, cwd=tmp_path)

    ok(run("subscriptions", "add", SUB, "--name", "Prod", "--alias", "prod"))
    for alias in ("*", "all", "All", OTHER_SUB.upper(), "pr\u200bod"):
        assert "alias" in refused(run("subscriptions", "add", OTHER_SUB, "--name", "Dev", "--alias", alias))
    line = refused(run("subscriptions", "add", OTHER_SUB, "--name", "Dev", "--alias", "PROD"))
    assert f"reads the same as `prod`, the alias of subscription `{SUB}`" in line

    (tmp_path / "scope.csv").write_text(f"id,name,alias\n{OTHER_SUB},Dev,ALL\n", encoding="utf-8")
    assert refused(run("subscriptions", "import", "scope.csv")).startswith("error: scope.csv, line 2: ")
    (tmp_path / "alike.csv").write_text(
        f"id,name,alias\n{SUB},Prod,Dev\n{OTHER_SUB},Dev,dev\n", encoding="utf-8"
    )
    line = refused(run("subscriptions", "import", "alike.csv"))
    assert (
        line == "error: alike.csv, line 3: alias dev is already given on line 2 (as Dev: they read the same)"
    )
    assert query(sqlite_url, select(Subscription.id, Subscription.alias)) == [(SUB, "prod")]

    # `*` and `all` name every subscription, for roles too.
    assert ok(run("roles", "grant", "U0OWNER", "owner", "--subscription", "all")) == (
        "granted owner to U0OWNER on *\n"
    )
    revoked = ok(run("roles", "revoke", "U0OWNER", "owner", "--subscription", "*", "--force"))
    assert "does not hold" not in revoked
    assert query(sqlite_url, select(func.count()).select_from(RoleAssignment)) == [(0,)]


def test_reimport_without_the_alias_column_keeps_aliases(database_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    (tmp_path / "full.csv").write_text(
        f"id,name,alias\n{SUB},Prod,prod\n{OTHER_SUB},Dev,dev\n", encoding="utf-8"
    )
    assert ok(run("subscriptions", "import", "full.csv")) == "added 2, updated 0, unchanged 0\n"
    (tmp_path / "names.csv").write_text(f"id,name\n{SUB},Prod EU\n{OTHER_SUB},Dev\n", encoding="utf-8")
    assert ok(run("subscriptions", "import", "names.csv")) == "added 0, updated 1, unchanged 1\n"
    aliases = select(Subscription.id, Subscription.name, Subscription.alias).order_by(Subscription.id)
    assert query(database_url, aliases) == [(SUB, "Prod EU", "prod"), (OTHER_SUB, "Dev", "dev")]

    # With the column, an empty cell (or a row that stops before it) still removes the alias.
    (tmp_path / "cleared.csv").write_text(
        f"id,name,alias\n{SUB},Prod EU,\n{OTHER_SUB},Dev\n", encoding="utf-8"
    )
    assert ok(run("subscriptions", "import", "cleared.csv")) == "added 0, updated 2, unchanged 0\n"
    assert query(database_url, aliases) == [(SUB, "Prod EU", None), (OTHER_SUB, "Dev", None)]


def test_text_typed_in_a_terminal_that_is_not_utf8_is_refused_in_one_line(
    database_url: str, tmp_path: Path
) -> None:
    """`Café` typed in a Latin-1 terminal arrives as bytes that are not UTF-8 (`Caf\\xe9`): refused with a
    sentence saying so, nothing written, on SQLite as on PostgreSQL (it was a traceback, or a "database
    error" naming the database)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return dpor_bot(*args, url=database_url, cwd=tmp_path)

    latin1 = os.fsdecode(b"Caf\xe9")  # what Python makes of those bytes in argv
    for args in (
        ("subscriptions", "add", SUB, "--name", latin1),
        ("subscriptions", "add", SUB, "--name", "Prod", "--alias", latin1),
        ("partners", "add", "4977985", "--name", latin1),
        ("people", "link", "U0ALICE", latin1 + "@contoso.com"),
        ("requests", "cancel", "1", "--reason", latin1),
        ("roles", "grant", "U0ALICE", "owner", "--subscription", latin1),
        ("roles", "list", "--subscription", latin1),
    ):
        line = refused(run(*args))
        assert "not UTF-8" in line, line
    assert query(database_url, select(func.count()).select_from(AuditEvent)) == [(0,)]
    assert query(database_url, select(func.count()).select_from(Subscription)) == [(0,)]


def test_a_libpq_sslmode_in_database_url_is_understood(pg_url: str, tmp_path: Path) -> None:
    """`?sslmode=require`, as Azure Database for PostgreSQL and most hosts write it: asyncpg calls it `ssl`
    (it was a TypeError traceback from every command)."""
    url = pg_url.replace("postgresql+asyncpg://", "postgresql://") + "?sslmode=disable"  # no TLS on CI's
    assert "no subscriptions" in ok(dpor_bot("subscriptions", "list", url=url, cwd=tmp_path))


def test_a_database_url_naming_its_servers_in_the_query_connects(pg_url: str, tmp_path: Path) -> None:
    """SQLAlchemy reads `host` and `port` from the query, each possibly more than once (several servers,
    tried in turn; a unix socket's directory): such URLs worked, and must not be refused as arguments
    asyncpg does not take."""
    parts = make_url(pg_url)
    host, port = parts.host, parts.port or 5432
    base = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    for servers in (f"host={host}:{port}&host={host}:{port}", f"host={host},{host}&port={port},{port}"):
        url = f"{base}?{servers}"
        assert "no subscriptions" in ok(dpor_bot("subscriptions", "list", url=url, cwd=tmp_path))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://bot:pw-secret@db.internal:5432x/dpor",
        "postgresql://bot:pw-secret@db.internal:/dpor",
        "postgresql://bot:pw-secret@[::1/dpor",
    ],
)
def test_a_database_url_whose_port_is_not_a_number_is_one_line(url: str, tmp_path: Path) -> None:
    """It was a ValueError traceback from every command (SQLAlchemy's parser, at the first connection)."""
    line = refused(dpor_bot("subscriptions", "list", url=url, cwd=tmp_path))
    assert line.startswith("error: DATABASE_URL: expected ") and "port" in line, line
    assert "pw-secret" not in line


def test_database_urls_are_never_shown_with_their_secrets(tmp_path: Path) -> None:
    # An unencoded `/` in the password: refused, naming the variable, saying what to do, masked.
    line = refused(
        dpor_bot("roles", "list", url="postgresql://dpor:pa/ss-secret@127.0.0.1:1/dpor", cwd=tmp_path)
    )
    assert line.startswith("error: DATABASE_URL: expected a URL whose user name and password percent-encode")
    assert "ss-secret" not in line and "dpor:***@127.0.0.1:1/dpor" in line
    # A password in the query string is masked too where the database is named.
    url = "postgresql://dpor@127.0.0.1:1/dpor?password=query-secret"
    line = refused(dpor_bot("subscriptions", "list", url=url, cwd=tmp_path))
    assert line.startswith(
        "error: cannot reach the database at postgresql+asyncpg://***@127.0.0.1:1/dpor?***: "
    )
    assert "secret" not in line
