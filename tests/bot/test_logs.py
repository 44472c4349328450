"""The log's formats (bot/logs.py): JSON lines with their fields, text lines, and no secret in either."""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from bot import logs
from bot.settings import ConfigError, load_settings

TOKEN = "xoxb-1111-2222-abcdefghijkl"
SIGNING = "0123456789abcdef-signing"
WEBHOOK = "webhook-secret-for-signing"
DB_PASSWORD = "pg-pass-Ω-1234"
CLIENT_SECRET = "azure-client-secret-value"


def record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("dpor.test", level, __file__, 1, message, args, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def settings(tmp_path: Path):
    identities = tmp_path / "azure.json"
    identities.write_text(
        json.dumps(
            {
                "*": {
                    "tenant_id": "11111111-1111-1111-1111-111111111111",
                    "client_id": "22222222-2222-2222-2222-222222222222",
                    "client_secret": CLIENT_SECRET,
                }
            }
        )
    )
    return load_settings(
        SLACK_BOT_TOKEN=TOKEN,
        SLACK_SIGNING_SECRET=SIGNING,
        DATABASE_URL=f"postgresql://dpor:{DB_PASSWORD}@db.internal:5432/dpor",
        DPOR_WEBHOOK_URL="https://hooks.example.com/dpor?key=query-credential",
        DPOR_WEBHOOK_SECRET=WEBHOOK,
        DPOR_AZURE_CREDENTIALS_FILE=str(identities),
        DPOR_LOG_FORMAT="json",
    )


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = json.loads(logs.JsonFormatter().format(record("request %s applied", 12)))
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["level"] == "INFO" and line["logger"] == "dpor.test"
    assert line["message"] == "request 12 applied"
    at = datetime.fromisoformat(line["time"])
    assert line["time"].endswith("Z") and at.utcoffset() is not None and at.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - at).total_seconds()) < 60


def test_fields_come_from_the_bound_context_and_from_extra() -> None:
    formatter = logs.JsonFormatter()
    with logs.bound(slack_user="U0ADMIN", request_id=7, subscription=None):
        inside = json.loads(formatter.format(record("clicked")))
        with logs.bound(subscription="prod"):
            nested = json.loads(formatter.format(record("failed (ref ab12cd34)", error_ref="ab12cd34")))
    outside = json.loads(formatter.format(record("later")))
    assert inside["slack_user"] == "U0ADMIN" and inside["request_id"] == "7" and "subscription" not in inside
    assert nested["subscription"] == "prod" and nested["error_ref"] == "ab12cd34"
    assert nested["slack_user"] == "U0ADMIN"
    assert not set(outside) & set(logs.FIELDS)


def test_a_traceback_is_one_field_of_the_same_line() -> None:
    try:
        raise RuntimeError("the provider broke")
    except RuntimeError:
        made = record("apply failed", level=logging.ERROR)
        made.exc_info = sys.exc_info()
    text = logs.JsonFormatter().format(made)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "apply failed" and line["level"] == "ERROR"
    assert line["exc_info"].startswith("Traceback") and "RuntimeError: the provider broke" in line["exc_info"]


def test_no_secret_of_the_settings_reaches_a_line(tmp_path: Path) -> None:
    redact = logs.Redactor.for_settings(settings(tmp_path))
    leaky = (
        f"token {TOKEN}, signing {SIGNING}, webhook {WEBHOOK}, client {CLIENT_SECRET}; "
        f"connect postgresql://dpor:{DB_PASSWORD}@db.internal:5432/dpor failed; "
        "posting to https://hooks.example.com/dpor?key=query-credential"
    )
    for formatter in (logs.JsonFormatter(redact), logs.TextFormatter(redact)):
        try:
            raise ConnectionError(leaky)
        except ConnectionError:
            made = record("trouble: %s", leaky, level=logging.ERROR)
            made.exc_info = sys.exc_info()
        text = formatter.format(made)
        for secret in (TOKEN, SIGNING, WEBHOOK, CLIENT_SECRET, DB_PASSWORD, "query-credential"):
            assert secret not in text, (secret, text)
        assert "db.internal:5432" in text and "hooks.example.com/dpor" in text  # where, but not how


@pytest.mark.parametrize(
    ("said", "kept", "gone"),
    [
        ("auth with xoxb-9999-8888-zyxwvut failed", "xoxb-***", "zyxwvut"),
        ("socket mode token xapp-1-A111-222-abcdef", "xapp-***", "abcdef"),
        ("body: token=gIkuvaNzQIHg97ATvDxqgjtO&team_id=T1", "team_id=T1", "gIkuvaNzQIHg97ATvDxqgjtO"),
        ('{"token": "legacy-verification", "user": "U1"}', '"user": "U1"', "legacy-verification"),
        ("headers: Authorization: Bearer abc.def.ghi", "Authorization", "abc.def.ghi"),
        ("X-Slack-Signature: v0=5f4dcc3b5aa765d61d8327deb882cf99", "X-Slack-Signature", "5f4dcc3b5aa7"),
        ("respond to https://hooks.slack.com/commands/T1/123/s3cr3tpath", "hooks.slack.com/", "s3cr3tpath"),
        ("https://user:pw-in-url@example.com/x?sig=abc", "example.com/x", "pw-in-url"),
    ],
)
def test_secret_shapes_are_masked_whatever_the_settings(said: str, kept: str, gone: str) -> None:
    masked = logs.Redactor()(said)
    assert kept in masked and gone not in masked, masked


def test_ordinary_lines_are_left_alone() -> None:
    redact = logs.Redactor(["x"])  # too short to be a secret: masking it would mangle every line
    for said in (
        "refused a request without a valid Slack signature (401)",
        "dpor-bot listening on http://0.0.0.0:3000 (POST /slack/events, GET /healthz, GET /metrics)",
        "Slack refused SLACK_BOT_TOKEN (auth.test: invalid_auth)",
        "request 12 applied: partner 4977985 set by the ledger provider",
    ):
        assert redact(said) == said


def test_configure_installs_one_handler_at_the_level_asked(tmp_path: Path) -> None:
    root = logging.getLogger()
    level, hook = root.level, sys.unraisablehook
    first, second = io.StringIO(), io.StringIO()
    try:
        logs.configure("WARNING", "json", stream=first)
        handler = logs.configure_for(settings(tmp_path))  # json at INFO, to stderr
        handler.setStream(second)
        assert [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME] == [handler]
        assert root.level == logging.INFO
        logging.getLogger("dpor.test").info("with %s inside", TOKEN)
        # What Python can only report (a finaliser's exception) is a JSON line too.
        ignored = ValueError(f"closing with {TOKEN}")
        sys.unraisablehook(
            SimpleNamespace(exc_value=ignored, exc_traceback=None, err_msg=None, object="conn")
        )
        line, unraisable = [json.loads(text) for text in second.getvalue().splitlines()]
        assert line["message"] == "with *** inside" and first.getvalue() == ""
        assert unraisable["message"] == "Exception ignored in: 'conn'" and unraisable["level"] == "ERROR"
        assert unraisable["exc_info"] == "ValueError: closing with ***"
    finally:
        sys.unraisablehook = hook
        for h in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
            root.removeHandler(h)
        root.setLevel(level)


def test_text_lines_keep_their_format() -> None:
    line = logs.TextFormatter().format(record("outbox row %s delivered", 3, level=logging.WARNING))
    assert line.split(" ", 2)[2] == "WARNING dpor.test: outbox row 3 delivered"


def test_log_settings_are_checked_with_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPOR_LOG_FORMAT", " JSON ")
    monkeypatch.setenv("DPOR_LOG_LEVEL", "debug")
    chosen = load_settings()
    assert (chosen.log_format, chosen.log_level) == ("json", "DEBUG")
    monkeypatch.setenv("DPOR_LOG_FORMAT", "")
    monkeypatch.setenv("DPOR_LOG_LEVEL", "")
    chosen = load_settings()
    assert (chosen.log_format, chosen.log_level) == ("text", "INFO")
    monkeypatch.setenv("DPOR_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == "DPOR_LOG_FORMAT: expected text or json (got 'xml')"
    monkeypatch.setenv("DPOR_LOG_FORMAT", "json")
    monkeypatch.setenv("DPOR_LOG_LEVEL", "loud")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value) == "DPOR_LOG_LEVEL: expected one of debug, info, warning, error (got 'loud')"
