"""The bot's configuration: every environment variable of the contract, validated once at start-up."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///dpor-bot.db"

_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_EXAMPLES = "such as 72h, 30m, 2d, 1h30m or a number of seconds"
_DURATION_HELP = f"a duration {_DURATION_EXAMPLES}"


class ConfigError(Exception):
    """A setting has a value the bot cannot run with; the message is one line for the operator."""


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_DURATION_PART.pattern}\s*)+", text):
            seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"expected {_DURATION_HELP}")
    if seconds <= 0:
        raise ValueError(f"expected a duration above zero, {_DURATION_EXAMPLES}")
    return timedelta(seconds=seconds)


def normalise_database_url(url: str) -> str:
    """Map the URLs operators write (sqlite:///x.db, postgres://, postgresql://) to async drivers."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or not rest:
        raise ValueError(
            "expected sqlite:///path/to/file.db or postgresql://user:password@host:5432/database"
        )
    base = scheme.split("+", 1)[0].lower()
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgres", "postgresql"):
        host = rest.rsplit("@", 1)[-1]
        if not host or host.startswith("/"):
            raise ValueError(
                "expected a postgresql:// URL with a host, such as postgresql://user@host:5432/db"
            )
        return f"postgresql+asyncpg://{rest}"
    raise ValueError("expected sqlite:///path/to/file.db or postgresql://user:password@host:5432/database")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    approval_channel: str | None = Field(default=None, alias="DPOR_APPROVAL_CHANNEL")
    notify_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="DPOR_NOTIFY_CHANNELS"
    )
    provider: Literal["ledger", "azure", "webhook"] = Field(default="ledger", alias="DPOR_PROVIDER")
    request_ttl: timedelta = Field(default=timedelta(hours=72), alias="DPOR_REQUEST_TTL")
    required_approvals: int = Field(default=1, ge=1, le=10, alias="DPOR_REQUIRED_APPROVALS")
    allow_self_approval: bool = Field(default=False, alias="DPOR_ALLOW_SELF_APPROVAL")
    port: int = Field(default=3000, ge=1, le=65535, alias="PORT")

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http(s) URL such as https://slack.com/api/")
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("notify_channels", mode="before")
    @classmethod
    def _channels(cls, value: object) -> object:
        if isinstance(value, str):
            return [c.strip() for c in value.split(",") if c.strip()]
        return value

    @field_validator("request_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: object) -> timedelta:
        if isinstance(value, str | int | float | timedelta):
            return parse_duration(value)
        raise ValueError(f"expected {_DURATION_HELP}")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# The password in a URL's user part (scheme://user:password@host).
_URL_PASSWORD = re.compile(r"(://[^/@:]*:)[^/]*@")

_FIELD_HINTS = {
    "DPOR_REQUIRED_APPROVALS": "a whole number from 1 to 10",
    "DPOR_PROVIDER": "one of ledger, azure, webhook",
    "DPOR_ALLOW_SELF_APPROVAL": "true or false",
    "PORT": "a port number from 1 to 65535",
}


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a bad value becomes a ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "?"
        alias = Settings.model_fields[field].alias if field in Settings.model_fields else field
        name = alias or field.upper()
        got = error.get("input")
        if isinstance(got, str):
            got = _URL_PASSWORD.sub(r"\1***@", got)
        hint = _FIELD_HINTS.get(name) or error["msg"].removeprefix("Value error, ")
        shown = "" if "TOKEN" in name or "SECRET" in name else f" (got {got!r})"
        hint = hint.removeprefix("expected ")
        raise ConfigError(f"{name}: expected {hint}{shown}") from None
