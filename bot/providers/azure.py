"""The azure provider: Microsoft's Partner Admin Link (PAL), which links a partner ID to the calling identity.

PAL knows no subscriptions: it links a partner ID to whoever calls it (a user or service principal in
a tenant). So each subscription is served by the identity configured for it, and setting a partner
for one subscription sets it for every subscription that shares that identity.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from azure.identity.aio import CertificateCredential, ClientSecretCredential, DefaultAzureCredential
from azure.mgmt.managementpartner.aio import ACEProvisioningManagementPartnerAPI
from azure.mgmt.managementpartner.models import PartnerResponse

from bot.providers import PartnerState, ProviderError, name_check, retry_after
from bot.providers.arm import cloud_from, sdk_options
from bot.settings import AzureIdentity, Settings
from storage.db import Database

log = logging.getLogger("dpor.providers.azure")

# azure-core logs every request's headers at INFO; the provider logs one line per change instead.
if logging.getLogger("azure").level == logging.NOTSET:
    logging.getLogger("azure").setLevel(logging.WARNING)

_AADSTS = re.compile(r"AADSTS\d+")
MAX_MESSAGE = 300


class AzureProvider:
    name = "azure-pal"

    def __init__(
        self, settings: Settings, db: Database, *, transport: AsyncHttpTransport | None = None
    ) -> None:
        self.db = db
        self.identities = settings.azure_identities
        self.timeout = settings.provider_timeout.total_seconds()
        self.cloud = cloud_from(settings)  # the same cloud as the azure-rbac provider and role source
        # azure-core's transport hook: None is its aiohttp transport; the tests replay the service here.
        self.transport = transport

    def identity(self, subscription_id: str) -> AzureIdentity | None:
        """The identity configured for the subscription (directly, through its tenant, or `*`), else None."""
        return self.identities.get(subscription_id.lower()) or self.identities.get("*")

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        """Read the identity's link, update it (or create it when there is none), and read it back."""
        async with self._session(subscription_id, partner_id) as (client, identity):
            before = await _read(client)
            if before is None:
                try:
                    await client.partner.create(partner_id)
                except ResourceExistsError:  # linked since the read (another process): update instead
                    await client.partner.update(partner_id)
            elif before.partner_id != partner_id:
                await client.partner.update(partner_id)
            after = await _read(client)
        if after is None or after.partner_id != partner_id:
            shown = after.partner_id if after is not None else "no partner"
            raise ProviderError(
                f"Azure still reports {shown} for {_who(identity)} after linking partner {partner_id}",
                retryable=True,
            )
        state = self._state(after, identity)
        log.info(
            "azure: %s now carries partner %s (%s) for subscription %s%s",
            _who(identity),
            partner_id,
            after.partner_name,
            subscription_id,
            "" if before is None or before.partner_id is None else f", was {before.partner_id}",
        )
        detail = await name_check(self.db, partner_id, after.partner_name)
        return PartnerState(state.partner_id, state.partner_name, state.identity, detail)

    async def current(self, subscription_id: str) -> PartnerState:
        async with self._session(subscription_id, None) as (client, identity):
            linked = await _read(client)
        if linked is None:
            return PartnerState(None, None, _identity(None, identity))
        return self._state(linked, identity)

    def _state(self, linked: PartnerResponse, identity: AzureIdentity | None) -> PartnerState:
        return PartnerState(linked.partner_id, linked.partner_name, _identity(linked, identity))

    def _options(self) -> dict[str, Any]:
        return sdk_options(self.timeout, self.transport)

    def _credential(self, identity: AzureIdentity | None) -> AsyncTokenCredential:
        options = {**self._options(), "authority": self.cloud.authority_host}
        if identity is None:
            return DefaultAzureCredential(**options)
        if identity.client_secret is not None:
            return ClientSecretCredential(
                identity.tenant_id, identity.client_id, identity.client_secret.get_secret_value(), **options
            )
        password = identity.certificate_password
        return CertificateCredential(
            identity.tenant_id,
            identity.client_id,
            identity.certificate_path,
            password=password.get_secret_value() if password else None,
            **options,
        )

    @asynccontextmanager
    async def _session(
        self, subscription_id: str, partner_id: str | None
    ) -> AsyncIterator[tuple[ACEProvisioningManagementPartnerAPI, AzureIdentity | None]]:
        """A signed-in client for the subscription's identity; every failure becomes a ProviderError."""
        identity = self.identity(subscription_id)
        try:
            credential = self._credential(identity)
        except (ValueError, OSError) as exc:
            # The certificate cannot be read or decrypted; its text stays out (it may quote the file).
            raise ProviderError(
                f"the Azure credential of {_who(identity)} cannot be used ({type(exc).__name__}): "
                "check its certificate_path and certificate_password"
            ) from None
        try:
            async with (
                asyncio.timeout(self.timeout),
                credential,
                ACEProvisioningManagementPartnerAPI(
                    credential,
                    base_url=self.cloud.arm_url,
                    credential_scopes=[self.cloud.credential_scope],
                    **self._options(),
                ) as client,
            ):
                yield client, identity
        except ProviderError:
            raise
        except Exception as exc:
            failure = _failure(exc, identity, subscription_id, partner_id, self.timeout)
            log.warning("azure: subscription %s: %s", subscription_id, failure.message)
            raise failure from None


async def _read(client: ACEProvisioningManagementPartnerAPI) -> PartnerResponse | None:
    """The identity's current link, or None when it has none (404 ManagementPartnerNotFound)."""
    try:
        linked = await client.partners.get()
    except ResourceNotFoundError:
        return None
    return None if (linked.state or "").lower() == "deleted" else linked


def _who(identity: AzureIdentity | None) -> str:
    if identity is None:
        return "the default Azure credential"
    return f"client {identity.client_id} in tenant {identity.tenant_id}"


def _identity(linked: PartnerResponse | None, identity: AzureIdentity | None) -> dict[str, Any]:
    """Which identity carries the link: what the service says, and which credential the bot used."""
    found: dict[str, Any] = {
        "tenant_id": linked.tenant_id if linked else (identity.tenant_id if identity else None),
        "object_id": linked.object_id if linked else None,
        "credential": (
            "DefaultAzureCredential"
            if identity is None
            else "client secret"
            if identity.client_secret is not None
            else "certificate"
        ),
    }
    if identity is not None:
        found["client_id"] = identity.client_id
    return found


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def _failure(
    exc: BaseException,
    identity: AzureIdentity | None,
    subscription_id: str,
    partner_id: str | None,
    timeout: float,
) -> ProviderError:
    """Turn what azure-core raised into a sentence for the card, and say whether trying again may help."""
    who = _who(identity)
    if isinstance(exc, TimeoutError):
        return ProviderError(f"Azure did not answer within {timeout:g}s", retryable=True)
    if isinstance(exc, ServiceRequestError | ServiceResponseError) or isinstance(
        exc.__cause__, ServiceRequestError | ServiceResponseError | OSError
    ):
        return ProviderError(f"Azure could not be reached ({type(exc).__name__})", retryable=True)
    no_response = isinstance(exc, ClientAuthenticationError) and exc.response is None
    if isinstance(exc, CredentialUnavailableError) or (identity is None and no_response):
        return ProviderError(
            f"the default Azure credential could not sign in for subscription {subscription_id}: add the "
            "subscription (or its tenant, or *) to DPOR_AZURE_CREDENTIALS_FILE, or give the bot AZURE_* "
            "variables or a managed identity"
        )
    if not isinstance(exc, HttpResponseError):
        return ProviderError(f"Azure Partner Admin Link failed unexpectedly ({type(exc).__name__})")
    status = exc.status_code
    # ARM wraps the error ({"error": {"code", "message"}}); the SDK's Error model also reads it bare.
    error = exc.error if exc.error is not None and exc.error.code else getattr(exc, "model", None)
    code = getattr(error, "code", None) or None
    said = getattr(error, "message", None) or None
    headers = exc.response.headers if exc.response is not None else {}
    if status == 429 or (status is not None and status >= 500) or status in (408, 409):
        wait = retry_after(headers)
        label = f"HTTP {status}" + (f" {code}" if code else "")
        return ProviderError(
            f"Azure Partner Admin Link is busy or unavailable ({label})", retryable=True, retry_after=wait
        )
    if code == "PartnerIdInvalid":
        return ProviderError(
            f"Microsoft does not recognise partner ID {partner_id}: check it in Partner Center "
            "(Azure answered 400 PartnerIdInvalid)"
        )
    if isinstance(exc, ClientAuthenticationError) or status == 401:
        aadsts = _AADSTS.search(str(exc.message))
        because = aadsts.group(0) if aadsts else f"HTTP {status}" if status else "sign-in failed"
        return ProviderError(
            f"Azure did not accept the credential of {who} ({because}): check that its client secret or "
            "certificate is current and belongs to that tenant (DPOR_AZURE_CREDENTIALS_FILE)"
        )
    if status == 403:
        return ProviderError(
            f"Azure denied {who} (HTTP 403{f' {code}' if code else ''}): the identity needs a role on "
            f"subscription {subscription_id} (such as Owner or Contributor) to link a partner to it"
        )
    label = f"HTTP {status}" + (f" {code}" if code else "")
    return ProviderError(
        f"Azure Partner Admin Link refused the change ({label})" + (f": {_clip(said)}" if said else "")
    )
