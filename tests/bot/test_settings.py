"""Settings: every variable of the contract is validated at start-up, and a bad one is named in one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from bot.settings import ConfigError, Settings, load_settings, normalise_database_url, parse_duration
from storage.migrate import HEAD
from storage.urls import redact_url, url_host

REPO = Path(__file__).resolve().parents[2]

CONTRACT_VARIABLES = [field.alias for field in Settings.model_fields.values()]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start each test from the defaults, whatever the machine running it has set."""
    for name in CONTRACT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.provider == "ledger"
    assert settings.request_ttl == timedelta(hours=72)
    assert settings.required_approvals == 1
    assert settings.allow_self_approval is False
    assert settings.slack_api_url == "https://slack.com/api/"
    assert settings.database_url == "sqlite+aiosqlite:///dpor-bot.db"


@pytest.mark.parametrize(
    ("variable", "value", "accepts"),
    [
        ("DPOR_REQUIRED_APPROVALS", "0", "a whole number from 1 to 10"),
        ("DPOR_REQUIRED_APPROVALS", "two", "a whole number from 1 to 10"),
        ("DPOR_DB_POOL_SIZE", "lots", "a whole number from 1 to 500"),
        ("DPOR_DB_POOL_SIZE", "0", "a whole number from 1 to 500"),
        ("DPOR_DM_APPROVERS_MAX", "-1", "a whole number from 0 to 1000 (0: no DMs)"),
        ("DPOR_DM_APPROVERS_MAX", "all", "a whole number from 0 to 1000 (0: no DMs)"),
        ("DPOR_REQUEST_TTL", "soon", "a duration such as 72h"),
        ("DPOR_REQUEST_TTL", "0", "a duration above zero"),
        ("DPOR_REQUEST_TTL", "72x", "a duration such as 72h"),
        ("DPOR_PROVIDER", "gcp", "one of ledger, azure-rbac, azure-pal (old name: azure), webhook, portal"),
        ("DATABASE_URL", "mysql://x", "sqlite:///path/to/file.db or postgresql://"),
        ("DATABASE_URL", "nonsense", "sqlite:///path/to/file.db or postgresql://"),
        ("DATABASE_URL", "postgresql:///db", "a postgresql:// URL with a host"),
        ("DPOR_ALLOW_SELF_APPROVAL", "maybe", "true or false"),
        ("PORT", "0", "a port number from 1 to 65535"),
        ("SLACK_API_URL", "ftp://slack", "an http(s) URL"),
    ],
)
def test_a_wrong_value_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, accepts: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}: expected ")
    assert accepts in message
    assert repr(value) in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("72h", timedelta(hours=72)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("45s", timedelta(seconds=45)),
        ("3600", timedelta(hours=1)),
        ("72H", timedelta(hours=72)),
    ],
)
def test_durations_parse(monkeypatch: pytest.MonkeyPatch, text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected
    monkeypatch.setenv("DPOR_REQUEST_TTL", text)
    assert load_settings().request_ttl == expected


@pytest.mark.parametrize("text", ["", "h", "-5", "1.5h", "72 hours", "0s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("postgres://bot@db.internal/dpor", "postgresql+asyncpg://bot@db.internal/dpor"),
        ("postgresql://bot:pw@db:5432/dpor", "postgresql+asyncpg://bot:pw@db:5432/dpor"),
        ("postgresql+asyncpg://bot@db/dpor", "postgresql+asyncpg://bot@db/dpor"),
        # libpq's sslmode is asyncpg's ssl (tests/bot/test_cli.py connects with it).
        (
            "postgresql://bot@db/dpor?command_timeout=30&sslmode=require",
            "postgresql+asyncpg://bot@db/dpor?command_timeout=30&ssl=require",
        ),
        (
            "postgresql://bot@db/dpor?ssl=verify-full&prepared_statement_cache_size=0",
            "postgresql+asyncpg://bot@db/dpor?ssl=verify-full&prepared_statement_cache_size=0",
        ),
        # The host and port SQLAlchemy reads from the query: a unix socket's directory, several servers
        # (tests/bot/test_cli.py connects with them).
        (
            "postgresql://bot@localhost/dpor?host=/var/run/postgresql&port=5433",
            "postgresql+asyncpg://bot@localhost/dpor?host=/var/run/postgresql&port=5433",
        ),
        (
            "postgresql://bot@db/dpor?host=db1:5432&host=db2:5433&target_session_attrs=primary",
            "postgresql+asyncpg://bot@db/dpor?host=db1:5432&host=db2:5433&target_session_attrs=primary",
        ),
        (
            "postgresql://bot@db/dpor?host=db1,db2&port=5432,5433&krbsrvname=postgres&gsslib=gssapi",
            "postgresql+asyncpg://bot@db/dpor?host=db1,db2&port=5432,5433&krbsrvname=postgres&gsslib=gssapi",
        ),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite:////var/lib/dpor/x.db", "sqlite+aiosqlite:////var/lib/dpor/x.db"),
    ],
)
def test_database_urls_normalise_to_async_drivers(
    monkeypatch: pytest.MonkeyPatch, url: str, normalised: str
) -> None:
    assert normalise_database_url(url) == normalised
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().database_url == normalised


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("application_name=dpor", "takes no `application_name`"),
        ("sslmode=require&connect_timeout=10", "takes no `connect_timeout`"),
        ("sslrootcert=/etc/ca.pem&sslmode=verify-full", "takes no `sslrootcert`"),
        ("statement_cache_size=0", "takes no `statement_cache_size`"),
        ("sslmode=yes-please", "ssl (or sslmode) is one of disable, allow, prefer, require"),
        ("command_timeout=soon", "command_timeout is a number of seconds over 0"),
        ("prepared_statement_cache_size=-1", "prepared_statement_cache_size is a whole number"),
        ("ssl=require&ssl=disable", "gives `ssl` once"),
        ("host=/var/run/postgresql&port=5432x", "port is a number"),
    ],
)
def test_a_database_url_with_an_argument_the_driver_does_not_take_is_refused(
    monkeypatch: pytest.MonkeyPatch, query: str, said: str
) -> None:
    """The query goes to asyncpg as keyword arguments: anything else was a TypeError traceback from every
    command at its first connection (tests/bot/test_cli.py shows the one line a command prints)."""
    monkeypatch.setenv("DATABASE_URL", f"postgresql://bot:pw-secret@db.internal/dpor?{query}")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: expected a postgresql:// URL") and said in message, message
    assert "pw-secret" not in message


def test_lists_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOR_NOTIFY_CHANNELS", " C1, C2,,C3 ")
    monkeypatch.setenv("DPOR_ALLOW_SELF_APPROVAL", "true")
    monkeypatch.setenv("DPOR_REQUIRED_APPROVALS", "2")
    monkeypatch.setenv("SLACK_API_URL", "http://127.0.0.1:9999/api")
    settings = load_settings()
    assert settings.notify_channels == ["C1", "C2", "C3"]
    assert settings.allow_self_approval is True
    assert settings.required_approvals == 2
    assert settings.slack_api_url == "http://127.0.0.1:9999/api/"


def test_a_secret_is_never_echoed_in_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-token-value")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-value")
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-secret-app-token")
    # A database password is a secret too, and a URL missing its host is refused.
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot:db-password-value@/dpor")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: expected ")
    assert "bot:***@" in message
    for secret in ("xoxb-secret-token-value", "signing-secret-value", "xapp-secret-app-token", "db-password"):
        assert secret not in message


def test_secrets_are_not_shown_by_the_settings_object(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-token-value")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-value")
    settings = load_settings()
    assert settings.slack_bot_token is not None
    assert settings.slack_bot_token.get_secret_value() == "xoxb-secret-token-value"
    shown = f"{settings!r} {settings}"
    assert "xoxb-secret-token-value" not in shown
    assert "signing-secret-value" not in shown


@pytest.mark.parametrize("optional", ["DPOR_REMIND_AFTER", "DPOR_RECONCILE_EVERY"])
def test_optional_durations_take_off(monkeypatch: pytest.MonkeyPatch, optional: str) -> None:
    field = next(name for name, f in Settings.model_fields.items() if f.alias == optional)
    for off in ("off", "OFF", "0", ""):
        monkeypatch.setenv(optional, off)
        assert getattr(load_settings(), field) is None
    monkeypatch.setenv(optional, "2h")
    assert getattr(load_settings(), field) == timedelta(hours=2)
    monkeypatch.setenv(optional, "soon")
    with pytest.raises(ConfigError, match=f"^{optional}: expected a duration such as 72h"):
        load_settings()


@pytest.mark.parametrize(
    "variable",
    [
        "DPOR_REQUEST_TTL",
        "DPOR_PROVIDER_TIMEOUT",
        "DPOR_OUTBOX_POLL_INTERVAL",
        "DPOR_OUTBOX_LEASE",
        "DPOR_SWEEP_INTERVAL",
    ],
)
def test_every_duration_is_read_alike(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    field = next(name for name, f in Settings.model_fields.items() if f.alias == variable)
    monkeypatch.setenv(variable, "1h30m")
    assert getattr(load_settings(), field) == timedelta(hours=1, minutes=30)
    for bad in ("off", "0", "soon"):
        monkeypatch.setenv(variable, bad)
        with pytest.raises(ConfigError, match=f"^{variable}: expected a duration"):
            load_settings()


@pytest.mark.parametrize("variable", ["DPOR_REQUEST_TTL", "DPOR_OUTBOX_LEASE", "DPOR_AZURE_ROLE_CACHE"])
@pytest.mark.parametrize("value", ["99999999999999999", "99999999999999d", "9" * 400, "9999999d"])
def test_a_duration_too_long_is_named_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Too big for a timedelta (OverflowError), or for a date once added to now (every request failed)."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"^{variable}: expected a duration of at most 3650d"):
        load_settings()
    monkeypatch.setenv(variable, "3650d")
    assert timedelta(days=3650) in load_settings().model_dump().values()


# --- URLs: credentials and query strings never shown; ambiguous credentials refused (issue 16, item 10) ---


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql://bot:pa/ss-secret@db.internal:5432/dpor"),
        ("DATABASE_URL", "postgres://bot:pa?ss-secret@db.internal/dpor"),
        ("DATABASE_URL", "postgresql://bot:pa@ss-secret@db.internal/dpor"),
        ("DPOR_WEBHOOK_URL", "https://hook:pa/ss-secret@hooks.example.com/dpor"),
        ("DPOR_WEBHOOK_URL", "https://hook:pa#ss-secret@hooks.example.com/dpor"),
        ("SLACK_API_URL", "https://proxy:pa/ss-secret@slack-proxy.internal/api/"),
    ],
)
def test_a_url_whose_credentials_are_ambiguous_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    monkeypatch.setenv(variable, url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: expected a URL whose user name and password percent-encode `/`")
    assert "ss-secret" not in message and ":***@" in message


def test_a_slack_api_url_with_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """slack_sdk sends the token as an Authorization header, which aiohttp refuses to combine with a URL's
    user and password: serve and doctor stopped at auth.test with a traceback (ValueError)."""
    monkeypatch.setenv("SLACK_API_URL", "https://proxy:pw-secret@slack-proxy.internal/api/")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("SLACK_API_URL: expected an http(s) URL without a user name or password")
    assert "pw-secret" not in message


def test_percent_encoded_credentials_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bot:pa%2Fss@db.internal/dpor")
    monkeypatch.setenv("DPOR_WEBHOOK_URL", "https://hook:pa%2Fss@hooks.example.com/dpor?access_token=t")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://bot:pa%2Fss@db.internal/dpor"
    assert settings.webhook_url == "https://hook:pa%2Fss@hooks.example.com/dpor?access_token=t"


def test_a_refused_url_is_shown_without_its_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOR_WEBHOOK_URL", "ftp://hooks.example.com/dpor?access_token=token-secret")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "DPOR_WEBHOOK_URL: expected an http(s) URL such as https://hooks.example.com/dpor "
        "(got 'ftp://hooks.example.com/dpor?***')"
    )


@pytest.mark.parametrize(
    ("url", "shown", "host"),
    [
        ("postgresql://bot:pw@db:5432/dpor", "postgresql://bot:***@db:5432/dpor", "db:5432"),
        ("postgresql://bot:pa/ss@db/dpor", "postgresql://bot:***@db/dpor", "db"),
        (
            "https://u:p?x#y@hooks.example.com/a?b",
            "https://u:***@hooks.example.com/a?***",
            "hooks.example.com",
        ),
        ("https://token@hooks.example.com/a", "https://***@hooks.example.com/a", "hooks.example.com"),
        ("https://a@b@hooks.example.com/", "https://***@hooks.example.com/", "hooks.example.com"),
        (
            "https://hooks.example.com/a?access_token=t",
            "https://hooks.example.com/a?***",
            "hooks.example.com",
        ),
        ("https://hooks.example.com/a#t", "https://hooks.example.com/a#***", "hooks.example.com"),
        ("sqlite:///var/lib/dpor@1/x.db", "sqlite:///var/lib/dpor@1/x.db", ""),
        ("user:pw@host", "***", ""),
    ],
)
def test_redact_url_and_url_host(url: str, shown: str, host: str) -> None:
    assert redact_url(url) == shown
    assert url_host(url) == host


def test_migrations_read_database_url_without_the_bot_settings(tmp_path: Path) -> None:
    """Alembic's env.py, run as `alembic upgrade` would run it: no connection handed over."""
    script = (
        "import sys\n"
        "from alembic import command\n"
        "from storage.migrate import alembic_config\n"
        "command.upgrade(alembic_config(), 'head')\n"
        "assert 'bot.settings' not in sys.modules, 'env.py imported bot.settings'\n"
    )
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
