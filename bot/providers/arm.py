"""Azure Resource Manager, shared: the cloud, the bot's own credential, a subscription's role assignments.

The azure-rbac provider creates and removes role assignments through it; the Azure role source reads a
person's roles through it. Every call is bounded by DPOR_PROVIDER_TIMEOUT, never retried by azure-core
(the outbox retries, honouring Retry-After), and fails as a ProviderError whose message names no secret.

Which assignments apply to a subscription: ARM's list for a subscription without a filter returns those
at the subscription, those inherited from above it (management groups, the root `/`) and those below it
(resource groups, resources). The bot keeps the first two and drops the rows below, which grant nothing
on the subscription itself. With a principal, `$filter=assignedTo('{id}')` adds the groups the principal
is a member of (transitively), so a group's Owner row counts for its members.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.identity import CredentialUnavailableError
from azure.identity.aio import DefaultAzureCredential
from azure.mgmt.authorization.v2022_04_01.aio import AuthorizationManagementClient
from azure.mgmt.authorization.v2022_04_01.models import RoleAssignment, RoleAssignmentCreateParameters

from bot.azure_ids import guid, role_name
from bot.providers import ProviderError, retry_after
from bot.settings import ConfigError, Settings

log = logging.getLogger("dpor.providers.arm")

if logging.getLogger("azure").level == logging.NOTSET:  # azure-core logs every request's headers at INFO
    logging.getLogger("azure").setLevel(logging.WARNING)

API_VERSION = "2022-04-01"
MAX_MESSAGE = 300


@dataclass(frozen=True)
class Cloud:
    name: str
    arm_url: str
    authority_host: str
    credential_scope: str


def _cloud(name: str, arm_url: str, authority_host: str) -> Cloud:
    return Cloud(name, arm_url, authority_host, f"{arm_url}/.default")


CLOUDS = {
    "public": _cloud("public", "https://management.azure.com", "https://login.microsoftonline.com"),
    "china": _cloud("china", "https://management.chinacloudapi.cn", "https://login.chinacloudapi.cn"),
    "usgov": _cloud("usgov", "https://management.usgovcloudapi.net", "https://login.microsoftonline.us"),
}


def cloud_from(settings: Settings) -> Cloud:
    """DPOR_AZURE_CLOUD, unless DPOR_AZURE_ARM_URL and DPOR_AZURE_AUTHORITY_HOST (both or neither) say."""
    arm_url, authority = settings.azure_arm_url, settings.azure_authority_host
    if (arm_url is None) != (authority is None):
        given, missing = (
            ("DPOR_AZURE_ARM_URL", "DPOR_AZURE_AUTHORITY_HOST")
            if authority is None
            else ("DPOR_AZURE_AUTHORITY_HOST", "DPOR_AZURE_ARM_URL")
        )
        raise ConfigError(
            f"{missing}: set it too when {given} is set (or unset both and use DPOR_AZURE_CLOUD)"
        )
    if arm_url is not None and authority is not None:
        return _cloud("custom", arm_url.rstrip("/"), authority.rstrip("/"))
    return CLOUDS[settings.azure_cloud]


@dataclass(frozen=True)
class Assignment:
    id: str
    scope: str
    role_definition_id: str
    principal_id: str
    principal_type: str | None

    @property
    def role_guid(self) -> str:
        return self.role_definition_id.rstrip("/").rsplit("/", 1)[-1].lower()

    @classmethod
    def of(cls, model: RoleAssignment) -> Assignment:
        return cls(
            id=model.id or "",
            scope=model.scope or "",
            role_definition_id=model.role_definition_id or "",
            principal_id=(model.principal_id or "").lower(),
            principal_type=model.principal_type,
        )


def subscription_scope(subscription_id: str) -> str:
    return f"/subscriptions/{subscription_id}"


def applies_to(scope: str, subscription_id: str) -> bool:
    """True for the subscription itself and the scopes above it (management groups, the root)."""
    scope = scope.rstrip("/").lower() or "/"
    return (
        scope == "/"
        or scope.startswith("/providers/microsoft.management/managementgroups/")
        or scope == subscription_scope(subscription_id).lower()
    )


def sdk_options(timeout: float, transport: AsyncHttpTransport | None) -> dict[str, Any]:
    """The Azure SDK clients' and credentials' options: bounded, and no retries of azure-core's own
    (they belong to the outbox: durable, bounded, Retry-After honoured); `transport` is the tests' hook."""
    options: dict[str, Any] = {"retry_total": 0, "connection_timeout": timeout, "read_timeout": timeout}
    if transport is not None:
        options["transport"] = transport
    return options


class Arm:
    """Role assignments on subscriptions, signed in as the bot's own identity (DefaultAzureCredential)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: AsyncHttpTransport | None = None,
        credential: AsyncTokenCredential | None = None,
    ) -> None:
        self.cloud = cloud_from(settings)
        self.timeout = settings.provider_timeout.total_seconds()
        # azure-core's transport hook: None is its aiohttp transport; the tests replay ARM here.
        self.transport = transport
        self._credential = credential
        self._owned: AsyncTokenCredential | None = None

    def _options(self) -> dict[str, Any]:
        return sdk_options(self.timeout, self.transport)

    def credential(self) -> AsyncTokenCredential:
        if self._credential is not None:
            return self._credential
        if self._owned is None:
            self._owned = DefaultAzureCredential(authority=self.cloud.authority_host, **self._options())
        return self._owned

    @asynccontextmanager
    async def _client(
        self, subscription_id: str, action: str, scope: str
    ) -> AsyncIterator[AuthorizationManagementClient]:
        """A client for one call, bounded by the timeout; whatever fails becomes a ProviderError."""
        try:
            async with (
                asyncio.timeout(self.timeout),
                AuthorizationManagementClient(
                    self.credential(),
                    subscription_id,
                    base_url=self.cloud.arm_url,
                    credential_scopes=[self.cloud.credential_scope],
                    api_version=API_VERSION,
                    **self._options(),
                ) as client,
            ):
                yield client
        except ProviderError:
            raise
        except Exception as exc:
            failure = _failure(exc, action, scope, self.timeout)
            log.warning("arm: %s on %s: %s", action, scope, failure.message)
            raise failure from None

    async def assignments(self, subscription_id: str, *, principal_id: str | None = None) -> list[Assignment]:
        """The role assignments that apply at the subscription (at it or inherited), every page of them."""
        principal = None
        if principal_id is not None:
            principal = guid(principal_id)
            if principal is None:
                raise ProviderError(f"{principal_id!r} is not an object ID (a GUID)")
        scope = subscription_scope(subscription_id)
        found: list[Assignment] = []
        async with self._client(
            subscription_id, "Microsoft.Authorization/roleAssignments/read", scope
        ) as client:
            rows = client.role_assignments.list_for_subscription(
                filter=f"assignedTo('{principal}')" if principal else None
            )
            async for row in rows:
                found.append(Assignment.of(row))
        return [a for a in found if applies_to(a.scope, subscription_id)]

    async def create(self, subscription_id: str, principal_id: str, role_definition_guid: str) -> Assignment:
        """Give the principal the role on the subscription; when it already has it there, that one."""
        principal, role = guid(principal_id), guid(role_definition_guid)
        if principal is None or role is None:
            raise ProviderError(f"cannot assign role {role_definition_guid!r} to {principal_id!r}: not GUIDs")
        scope = subscription_scope(subscription_id)
        parameters = RoleAssignmentCreateParameters(
            role_definition_id=f"{scope}/providers/Microsoft.Authorization/roleDefinitions/{role}",
            principal_id=principal,
            # The SDK's default says User; ARM refuses a wrong type (UnmatchedPrincipalType), so none.
            principal_type=None,
        )
        async with self._client(
            subscription_id, "Microsoft.Authorization/roleAssignments/write", scope
        ) as client:
            try:
                made = await client.role_assignments.create(scope, str(uuid.uuid4()), parameters)
                return Assignment.of(made)
            except ResourceExistsError as exc:
                if _code(exc) != "RoleAssignmentExists":
                    raise
        for existing in await self.assignments(subscription_id, principal_id=principal):
            same_scope = existing.scope.rstrip("/").lower() == scope.lower()
            if same_scope and existing.principal_id == principal and existing.role_guid == role:
                return existing
        raise ProviderError(
            f"Azure says principal {principal} already has {role_name(role)} on {scope} but does not list it",
            retryable=True,
        )

    async def delete(self, assignment_id: str) -> None:
        """Remove a role assignment by its ID; one already gone is fine."""
        match = re.match(r"/?subscriptions/([^/]+)", assignment_id, re.IGNORECASE)
        subscription_id = match.group(1) if match else "00000000-0000-0000-0000-000000000000"
        action = "Microsoft.Authorization/roleAssignments/delete"
        async with self._client(subscription_id, action, assignment_id) as client:
            with suppress(ResourceNotFoundError):  # already gone
                await client.role_assignments.delete_by_id(assignment_id.lstrip("/"))

    async def close(self) -> None:
        if self._owned is not None:
            await self._owned.close()
            self._owned = None


def _code(exc: HttpResponseError) -> str | None:
    error = exc.error if exc.error is not None and exc.error.code else getattr(exc, "model", None)
    return getattr(error, "code", None) or None


def _said(exc: HttpResponseError) -> str | None:
    error = exc.error if exc.error is not None and exc.error.code else getattr(exc, "model", None)
    return getattr(error, "message", None) or None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


_DENIED = re.compile(r"perform action '([^']+)' over scope '([^']+)'")
_AADSTS = re.compile(r"AADSTS\d+")


def _failure(exc: BaseException, action: str, scope: str, timeout: float) -> ProviderError:
    """What azure-core raised, as a sentence for the card and the log, and whether trying again may help."""
    if isinstance(exc, TimeoutError):
        return ProviderError(f"Azure Resource Manager did not answer within {timeout:g}s", retryable=True)
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or isinstance(
        exc.__cause__, ServiceRequestError | ServiceResponseError | OSError
    ):
        return ProviderError(
            f"Azure Resource Manager could not be reached ({type(exc).__name__})", retryable=True
        )
    if isinstance(exc, CredentialUnavailableError) or (
        isinstance(exc, ClientAuthenticationError) and exc.response is None
    ):
        return ProviderError(
            "the bot's Azure identity could not sign in (DefaultAzureCredential): give the bot a managed "
            "identity, or AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET (or a certificate)"
        )
    if not isinstance(exc, HttpResponseError):
        log.warning("arm: unexpected failure", exc_info=exc)
        return ProviderError(f"Azure role assignments failed unexpectedly ({type(exc).__name__})")
    status, code = exc.status_code, _code(exc)
    label = f"HTTP {status}" + (f" {code}" if code else "")
    if status == 429 or (status is not None and status >= 500) or status in (408, 409):
        headers = exc.response.headers if exc.response is not None else {}
        return ProviderError(
            f"Azure Resource Manager is busy or unavailable ({label})",
            retryable=True,
            retry_after=retry_after(headers),
        )
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        aadsts = _AADSTS.search(str(exc.message))
        return ProviderError(
            f"Azure did not accept the bot's identity ({aadsts.group(0) if aadsts else label}): check its "
            "credential and that it belongs to the subscription's tenant and cloud (DPOR_AZURE_CLOUD)"
        )
    if status == 403:
        denied = _DENIED.search(_said(exc) or "")
        lacks, where = (denied.group(1), denied.group(2)) if denied else (action, scope)
        return ProviderError(
            f"the bot's Azure identity lacks {lacks} on {where} (Azure answered {label}): give it a role "
            "that allows it there (README: the azure-rbac provider)"
        )
    if code == "PrincipalNotFound":
        return ProviderError(
            f"Azure does not know the principal on {scope} ({label}): check the partner's object IDs "
            "(dpor-bot partners list) are in the subscription's tenant"
        )
    said = _said(exc)
    return ProviderError(
        f"Azure refused the role assignment ({label})" + (f": {_clip(said)}" if said else "")
    )
