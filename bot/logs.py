"""The process's log: text or one JSON object a line (DPOR_LOG_FORMAT), at DPOR_LOG_LEVEL; never a secret.

JSON lines carry `time` (ISO 8601, UTC), `level`, `logger` and `message`, and where known `request_id` (the
change request's number), `slack_user`, `subscription` and `error_ref` (the `ref` a person was shown), and
`exc_info` (the traceback) when there is one. Those fields come from `bound(...)` (a listener binds the
Slack user and what the request is about before calling the bot) or from a log call's `extra=`.

Every line, in either format, is masked first: the values of the settings that are secrets (tokens, the
signing secret, the webhook secret, client secrets, passwords of URLs), the credentials and query of any
URL (storage.urls.redact_url), Slack tokens and `token=`/`secret=`/`password=` values whatever they are.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, Any

from pydantic import BaseModel, SecretStr

from bot.settings import Settings
from storage.urls import redact_url

FIELDS = ("request_id", "slack_user", "subscription", "error_ref")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
HANDLER_NAME = "dpor"
MASK = "***"

_context: ContextVar[Mapping[str, str]] = ContextVar("dpor_log_fields", default=MappingProxyType({}))

_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>()\[\]{}]+")
_SLACK_TOKEN = re.compile(r"\b(xox[a-z]|xapp)-[A-Za-z0-9\-]+")
_SLACK_HOOK = re.compile(r"(hooks\.slack\.com/)[^\s'\"<>]+")  # response URLs: their path is the credential
_NAMED = re.compile(
    r"(?i)\b((?:[a-z_]*_)?(?:token|secret|password|signature|authorization))([\"']?\s*[:=]\s*[\"']?)"
    r"(?:bearer\s+)?([^\s\"'&,;}]+)"
)
_SHORTEST_SECRET = 4  # shorter values would mask ordinary words; no real secret is that short


@contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Every line logged inside (this task and what it awaits) carries these fields; None leaves one out."""
    values = {name: str(value) for name, value in fields.items() if value is not None}
    token = _context.set(MappingProxyType({**_context.get(), **values}))
    try:
        yield
    finally:
        _context.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, str]:
    """The contextual fields of a line: those bound around it, then those its call passed with `extra=`."""
    found = dict(_context.get())
    for name in FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            found[name] = str(value)
    return found


class Redactor:
    """Masks a line: the secrets it is given, URLs' credentials and query, and secret-looking pairs."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole.
        kept = {s for s in secrets if len(s) >= _SHORTEST_SECRET}
        self.secrets = sorted(kept, key=len, reverse=True)

    @classmethod
    def for_settings(cls, settings: Settings | None) -> Redactor:
        return cls(secret_values(settings) if settings is not None else ())

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
        text = _SLACK_HOOK.sub(rf"\1{MASK}", text)
        text = _SLACK_TOKEN.sub(rf"\1-{MASK}", text)
        return _NAMED.sub(rf"\1\2{MASK}", text)


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold: each SecretStr (however deep), and the credentials of URLs."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, Mapping):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item)
        elif isinstance(value, str) and "://" in value:
            found.extend(_url_credentials(value))

    walk(settings)
    return [value for value in found if value]


def _url_credentials(url: str) -> list[str]:
    """A URL's password (or a lone user part, often a token) and its query: what redact_url masks."""
    _, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    found = []
    if at and not rest.startswith("/"):
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    for mark in "?#":
        if mark in hostpart:
            found.append(hostpart.split(mark, 1)[1])
    return found


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the contextual fields and exc_info."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__()
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
        }
        entry.update({name: self.redact(value) for name, value in fields_of(record).items()})
        if record.exc_info:
            entry["exc_info"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, and a traceback below it, masked."""

    def __init__(self, redact: Redactor | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.redact = redact or Redactor()

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


def formatter(fmt: str, redact: Redactor | None = None) -> logging.Formatter:
    return JsonFormatter(redact) if fmt == "json" else TextFormatter(redact)


def configure(
    level: int | str = logging.INFO,
    fmt: str = "text",
    settings: Settings | None = None,
    *,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """One handler on the root logger (to stderr), replacing the one a previous call installed.

    Python's warnings and the exceptions it can only report ("Exception ignored in ...") go through it too,
    so that a JSON log holds nothing but JSON lines.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter(fmt, Redactor.for_settings(settings)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.unraisablehook = _unraisable
    return handler


def _unraisable(unraisable: Any) -> None:
    exc = unraisable.exc_value
    info = (type(exc), exc, unraisable.exc_traceback) if exc is not None else None
    where = f": {unraisable.object!r}" if unraisable.object is not None else ""
    logging.getLogger("dpor").error(
        "%s%s", unraisable.err_msg or "Exception ignored in", where, exc_info=info
    )


def configure_for(settings: Settings) -> logging.Handler:
    """The log DPOR_LOG_FORMAT and DPOR_LOG_LEVEL ask for, masking these settings' secrets."""
    return configure(settings.log_level, settings.log_format, settings)
