"""The bot's configuration: every environment variable of the contract, validated once at start-up."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage.db import POOL_SIZE
from storage.urls import (
    AMBIGUOUS_USERINFO,
    DEFAULT_DATABASE_URL,
    has_ambiguous_userinfo,
    normalise_database_url,
    redact_url,
)

_DURATION_PART = re.compile(r"(\d+)\s*([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_EXAMPLES = "such as 72h, 30m, 2d, 1h30m or a number of seconds"
_DURATION_HELP = f"a duration {_DURATION_EXAMPLES}"
_DURATION_MAX = timedelta(days=3650)  # beyond any sensible setting, below what overflows (`now + TTL`)
_DURATIONS = ("request_ttl", "provider_timeout", "outbox_poll_interval", "outbox_lease", "sweep_interval")
_OPTIONAL_DURATIONS = ("remind_after", "reconcile_every")  # these also take off (or 0, or nothing)
_OFF = ("", "0", "off")
AUDIT_KEY_MIN = 32
ROLE_WAIT_MAX = 2.5  # DPOR_AZURE_ROLE_WAIT: Azure is waited for at most this long inside Slack's 3 s
AUDIT_KEY_HELP = f"at least {AUDIT_KEY_MIN} characters, such as the 64 hex digits of `openssl rand -hex 32`"


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
    if seconds > _DURATION_MAX.total_seconds():  # before timedelta(), which overflows on huge ones
        raise ValueError(f"expected a duration of at most {_DURATION_MAX.days}d, {_DURATION_EXAMPLES}")
    return timedelta(seconds=seconds)


def _http_url(value: str, example: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"expected an http(s) URL such as {example}")
    if has_ambiguous_userinfo(value):
        raise ValueError(f"expected {AMBIGUOUS_USERINFO}")
    return value


# A Slack channel's ID (public C..., private G...): what the Web API takes; a name (`#general`) it refuses.
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]+", re.ASCII)
CHANNEL_ID_HELP = (
    "a Slack channel ID such as C0123ABCD, not a channel name: use the channel's ID "
    "(in Slack: open the channel's details, copy the channel ID at the bottom)"
)


def channel_id(value: str, *, listed: bool = False) -> str:
    """A channel setting's value: a channel ID, or a ValueError saying how to find one (`listed`: one of
    a comma-separated list, named in the sentence)."""
    value = value.strip()
    if not _CHANNEL_ID.fullmatch(value):
        which = f"; {value!r} is not one" if listed else ""
        raise ValueError(f"expected {CHANNEL_ID_HELP}{which}")
    return value


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_AZURE_FILE_HELP = "a JSON file of Azure identities (README: the azure provider)"


class AzureIdentity(BaseModel):
    """A service principal the azure provider signs in as: a client secret or a certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant_id: str
    client_id: str
    client_secret: SecretStr | None = None
    certificate_path: str | None = None
    certificate_password: SecretStr | None = None

    @model_validator(mode="after")
    def _one_credential(self) -> AzureIdentity:
        for name in ("tenant_id", "client_id"):
            if not _GUID.match(getattr(self, name)):
                raise ValueError(f"{name} is not a GUID")
        if (self.client_secret is None) == (self.certificate_path is None):
            raise ValueError("give exactly one of client_secret and certificate_path")
        if self.certificate_path is not None and not Path(self.certificate_path).is_file():
            raise ValueError("certificate_path is not a readable file")
        return self


def _identity_problem(error: ValidationError) -> str:
    """Name what is wrong with an identity without echoing any value (it may hold a secret)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    text = first["msg"].removeprefix("Value error, ")
    return f"{where}: {text}" if where else text


def _bad_identities(problem: str) -> ValueError:
    return ValueError(f"expected {_AZURE_FILE_HELP}; {problem}")


def read_azure_identities(path: str) -> dict[str, AzureIdentity]:
    """Read DPOR_AZURE_CREDENTIALS_FILE; entries that name `tenant:<id>` share that tenant's identity."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise _bad_identities(f"cannot read it: {exc.strerror or exc}") from None
    except ValueError:
        raise _bad_identities("it is not valid JSON") from None
    if not isinstance(raw, dict):
        raise _bad_identities("it holds no JSON object")
    identities: dict[str, AzureIdentity] = {}
    references: dict[str, str] = {}
    for key, value in raw.items():
        key = key.strip().lower()
        tenant = key.removeprefix("tenant:") if key.startswith("tenant:") else None
        if key != "*" and not _GUID.match(tenant if tenant is not None else key):
            raise _bad_identities(f"key {key!r} is not a subscription ID, tenant:<tenant-id> or *")
        if isinstance(value, str):
            if tenant is not None or not value.strip().lower().startswith("tenant:"):
                raise _bad_identities(f"entry {key!r} names no tenant:<tenant-id>")
            references[key] = value.strip().lower()
            continue
        if isinstance(value, dict) and tenant is not None:
            value = {"tenant_id": tenant, **value}
        try:
            identity = AzureIdentity.model_validate(value)
        except ValidationError as exc:
            raise _bad_identities(f"entry {key!r}: {_identity_problem(exc)}") from None
        if tenant is not None and identity.tenant_id.lower() != tenant:
            raise _bad_identities(f"entry {key!r} has another tenant_id")
        identities[key] = identity
    for key, target in references.items():
        if target not in identities:
            raise _bad_identities(f"entry {key!r} names {target}, which is not given")
        identities[key] = identities[target]
    return identities


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    slack_bot_token: SecretStr | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: SecretStr | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    database_url: str = Field(default=DEFAULT_DATABASE_URL, alias="DATABASE_URL")
    # Connections `serve` keeps open (storage.db.POOL_SIZE; up to 10 more in a burst).
    db_pool_size: int = Field(default=POOL_SIZE, ge=1, le=500, alias="DPOR_DB_POOL_SIZE")
    approval_channel: str | None = Field(default=None, alias="DPOR_APPROVAL_CHANNEL")
    notify_channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="DPOR_NOTIFY_CHANNELS"
    )
    provider: Literal["ledger", "azure-pal", "azure", "webhook", "azure-rbac", "portal"] = Field(
        default="ledger", alias="DPOR_PROVIDER"
    )
    request_ttl: timedelta = Field(default=timedelta(hours=72), alias="DPOR_REQUEST_TTL")
    required_approvals: int = Field(default=1, ge=1, le=10, alias="DPOR_REQUIRED_APPROVALS")
    allow_self_approval: bool = Field(default=False, alias="DPOR_ALLOW_SELF_APPROVAL")
    # Owners DMed when a request opens (0: none; more eligible owners than this: the channel only).
    dm_approvers_max: int = Field(default=10, ge=0, le=1000, alias="DPOR_DM_APPROVERS_MAX")
    port: int = Field(default=3000, ge=1, le=65535, alias="PORT")
    # The outbox worker and the sweep for expiry and reminders (README: Operating).
    remind_after: timedelta | None = Field(default=None, alias="DPOR_REMIND_AFTER")
    outbox_poll_interval: timedelta = Field(default=timedelta(seconds=1), alias="DPOR_OUTBOX_POLL_INTERVAL")
    outbox_lease: timedelta = Field(default=timedelta(seconds=30), alias="DPOR_OUTBOX_LEASE")
    outbox_max_attempts: int = Field(default=8, ge=1, le=100, alias="DPOR_OUTBOX_MAX_ATTEMPTS")
    outbox_concurrency: int = Field(default=20, ge=1, le=100, alias="DPOR_OUTBOX_CONCURRENCY")
    sweep_interval: timedelta = Field(default=timedelta(seconds=30), alias="DPOR_SWEEP_INTERVAL")
    provider_timeout: timedelta = Field(default=timedelta(seconds=30), alias="DPOR_PROVIDER_TIMEOUT")
    azure_identities: Annotated[dict[str, AzureIdentity], NoDecode] = Field(
        default_factory=dict, alias="DPOR_AZURE_CREDENTIALS_FILE"
    )
    # Which Azure cloud ARM and sign-in live in (bot/providers/arm.py::cloud_from); explicit URLs win.
    azure_cloud: Literal["public", "china", "usgov"] = Field(default="public", alias="DPOR_AZURE_CLOUD")
    azure_arm_url: str | None = Field(default=None, alias="DPOR_AZURE_ARM_URL")
    azure_authority_host: str | None = Field(default=None, alias="DPOR_AZURE_AUTHORITY_HOST")
    # The azure-rbac provider's role: a built-in name (Contributor, Owner) or a role definition GUID.
    azure_rbac_role: str = Field(default="Contributor", alias="DPOR_AZURE_RBAC_ROLE")
    webhook_url: str | None = Field(default=None, alias="DPOR_WEBHOOK_URL")
    webhook_secret: SecretStr | None = Field(default=None, alias="DPOR_WEBHOOK_SECRET")
    reconcile_every: timedelta | None = Field(default=None, alias="DPOR_RECONCILE_EVERY")
    # Logs and metrics (README: Operating).
    log_format: Literal["text", "json"] = Field(default="text", alias="DPOR_LOG_FORMAT")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", alias="DPOR_LOG_LEVEL")
    metrics_token: SecretStr | None = Field(default=None, alias="DPOR_METRICS_TOKEN")
    # The audit chain (README: Audit log): the key its hashes are keyed with (on SQLite, when unset, a
    # key file beside the database), and the channel its checkpoints are published in.
    audit_key: SecretStr | None = Field(default=None, alias="DPOR_AUDIT_KEY")
    audit_channel: str | None = Field(default=None, alias="DPOR_AUDIT_CHANNEL")
    # Where roles come from (bot/roles.py): the bot's own table, or Azure RBAC (bot/azure_roles.py), whose
    # role definitions (built-in names or GUIDs) make the bot's owner and admin, cached and waited for.
    role_source: Literal["local", "azure"] = Field(default="local", alias="DPOR_ROLE_SOURCE")
    azure_approver_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Owner"], alias="DPOR_AZURE_APPROVER_ROLES"
    )
    azure_requester_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["Contributor"], alias="DPOR_AZURE_REQUESTER_ROLES"
    )
    azure_role_cache: timedelta = Field(default=timedelta(seconds=60), alias="DPOR_AZURE_ROLE_CACHE")
    azure_role_wait: timedelta = Field(default=timedelta(seconds=2), alias="DPOR_AZURE_ROLE_WAIT")

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        value = _http_url(value, "https://slack.com/api/")
        if urlsplit(value).username is not None:
            # The token goes in an Authorization header: aiohttp refuses it beside a URL's user and password.
            raise ValueError("expected an http(s) URL without a user name or password (the token signs in)")
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("notify_channels", mode="before")
    @classmethod
    def _channels(cls, value: object) -> object:
        if isinstance(value, str):
            return [channel_id(c, listed=True) for c in value.split(",") if c.strip()]
        return value

    @field_validator("role_source", mode="before")
    @classmethod
    def _role_source(cls, value: object) -> object:
        return (value.strip().lower() or "local") if isinstance(value, str) else value

    @field_validator("azure_approver_roles", "azure_requester_roles", mode="before")
    @classmethod
    def _azure_roles(cls, value: object) -> object:
        if isinstance(value, str):
            from bot.azure_ids import role_guids  # imports nothing of the azure extra

            value = [name.strip() for name in value.split(",") if name.strip()]
            if not value:
                raise ValueError("expected Azure role names or role definition GUIDs, comma-separated")
            role_guids(value)
        return value

    @field_validator("azure_role_cache", "azure_role_wait", mode="before")
    @classmethod
    def _role_duration(cls, value: object, info: ValidationInfo) -> object:
        value = parse_duration(value) if isinstance(value, str | int | float) else value
        wait = info.field_name == "azure_role_wait"
        if wait and isinstance(value, timedelta) and value.total_seconds() > ROLE_WAIT_MAX:
            raise ValueError(f"expected at most {ROLE_WAIT_MAX}s (Slack waits 3 s for an answer), such as 2s")
        return value

    @field_validator("approval_channel", "audit_channel", mode="before")
    @classmethod
    def _channel(cls, value: object) -> object:
        if isinstance(value, str):
            return channel_id(value) if value.strip() else None
        return value

    @field_validator("azure_identities", mode="before")
    @classmethod
    def _azure_identities(cls, value: object) -> object:
        if isinstance(value, str):
            return read_azure_identities(value) if value.strip() else {}
        return value

    @field_validator("azure_cloud", mode="before")
    @classmethod
    def _azure_cloud(cls, value: object) -> object:
        return (value.strip().lower() or "public") if isinstance(value, str) else value

    @field_validator("azure_arm_url", "azure_authority_host", mode="before")
    @classmethod
    def _azure_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            if not value:
                return None
            if not re.match(r"^https://[^/\s]+", value) or has_ambiguous_userinfo(value):
                raise ValueError("expected an https URL such as https://management.azure.com")
        return value

    @field_validator("audit_key", mode="before")
    @classmethod
    def _audit_key(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if len(value) < AUDIT_KEY_MIN:
                raise ValueError(f"expected {AUDIT_KEY_HELP}")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value, "https://hooks.example.com/dpor")

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _log_word(cls, value: object, info: ValidationInfo) -> object:
        """Any case, blank for the default; a word that is none of them is refused as it was written."""
        level = info.field_name == "log_level"
        if isinstance(value, str):
            word = value.strip().lower() or ("info" if level else "text")
            if word in (("debug", "info", "warning", "error") if level else ("text", "json")):
                return word.upper() if level else word
        return value

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _metrics_token(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*_DURATIONS, *_OPTIONAL_DURATIONS, mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> timedelta | None:
        optional = info.field_name in _OPTIONAL_DURATIONS
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _OFF)):
            return None
        if isinstance(value, str | int | float | timedelta):
            return parse_duration(value)
        raise ValueError(f"expected {_DURATION_HELP}" + (", or off" if optional else ""))


_FIELD_HINTS = {
    "DPOR_REQUIRED_APPROVALS": "a whole number from 1 to 10",
    "DPOR_DB_POOL_SIZE": "a whole number from 1 to 500",
    "DPOR_DM_APPROVERS_MAX": "a whole number from 0 to 1000 (0: no DMs)",
    "DPOR_PROVIDER": "one of ledger, azure-rbac, azure-pal (old name: azure), webhook, portal",
    "DPOR_ALLOW_SELF_APPROVAL": "true or false",
    "DPOR_ROLE_SOURCE": "local or azure",
    "DPOR_AZURE_CLOUD": "public, china or usgov (or DPOR_AZURE_ARM_URL and DPOR_AZURE_AUTHORITY_HOST)",
    "PORT": "a port number from 1 to 65535",
    "DPOR_OUTBOX_MAX_ATTEMPTS": "a whole number from 1 to 100",
    "DPOR_OUTBOX_CONCURRENCY": "a whole number from 1 to 100",
    "DPOR_LOG_FORMAT": "text or json",
    "DPOR_LOG_LEVEL": "one of debug, info, warning, error",
}


# A variable whose value is never echoed in a message (its name says it holds a secret).
_SECRET_WORDS = ("TOKEN", "SECRET", "KEY", "PASSWORD")


def _problem(error: ErrorDetails) -> tuple[str, str]:
    """A bad value: its variable, and a line naming it, what it accepts and (unless secret) what it got."""
    field = str(error["loc"][0]) if error["loc"] else "?"
    alias = Settings.model_fields[field].alias if field in Settings.model_fields else field
    name = alias or field.upper()
    got = error.get("input")
    if isinstance(got, str) and "://" in got:
        got = redact_url(got)
    hint = _FIELD_HINTS.get(name) or error["msg"].removeprefix("Value error, ")
    shown = "" if any(word in name for word in _SECRET_WORDS) else f" (got {got!r})"
    hint = hint.removeprefix("expected ")
    return name, f"{name}: expected {hint}{shown}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment; bad values become one ConfigError naming each variable, one line each."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines: dict[str, str] = {}
        for error in exc.errors():
            name, line = _problem(error)
            lines.setdefault(name, line)  # the first problem of each variable
        raise ConfigError("\n".join(lines.values())) from None
