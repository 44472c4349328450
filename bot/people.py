"""People: Slack users linked by an operator to Microsoft Entra object IDs (DPOR_ROLE_SOURCE=azure).

A link is made by an operator only (`dpor-bot people link`, `people import`), from an object ID or from
a user principal name looked up in Microsoft Graph; never inferred from an email address. Linking and
unlinking are audited (`person.linked`, `person.unlinked`) in the transaction that changes the link.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bot import audit
from bot.errors import BadInput
from bot.settings import ConfigError, Settings
from storage import people as table
from storage.db import Database
from storage.models import Person

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A user principal name: name@domain, as Entra ID allows it (no spaces, one @, a dotted domain). `#` is
# allowed: every B2B guest's UPN has one (`alice_fabrikam.com#EXT#@contoso.onmicrosoft.com`); the lookup
# sends it percent-encoded, as Graph wants it.
_UPN = re.compile(r"[^\s@/\\?]{1,113}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
# Microsoft Graph of each cloud DPOR_AZURE_CLOUD names.
GRAPH = {
    "public": "https://graph.microsoft.com",
    "china": "https://microsoftgraph.chinacloudapi.cn",
    "usgov": "https://graph.microsoft.us",
}
GRAPH_TIMEOUT = 15.0


def object_id(text: str) -> str | None:
    """`text` as a lower-case object ID (NFKC-folded, braces dropped), or None when it is no GUID."""
    folded = unicodedata.normalize("NFKC", text).strip().strip("{}").lower()
    return folded if _GUID.fullmatch(folded) else None


def upn(text: str) -> str | None:
    folded = unicodedata.normalize("NFKC", text).strip()
    return folded if _UPN.fullmatch(folded) else None


@dataclass(frozen=True)
class Link:
    slack_user_id: str
    object_id: str
    upn: str | None = None


@dataclass(frozen=True)
class Linked:
    added: int
    updated: int
    unchanged: int


async def link(db: Database, links: Sequence[Link], *, actor: str) -> Linked:
    """Link each Slack user to its object ID, in one transaction (all or nothing); a link that is already
    so is left alone (a file imported again changes nothing). Each change audited as `person.linked`."""
    added = updated = unchanged = 0
    async with db.write() as session:
        for row in links:
            before = await table.person(session, row.slack_user_id)
            keep_upn = row.upn if row.upn is not None else (before.upn if before else None)
            if before is not None and before.object_id == row.object_id and before.upn == keep_upn:
                unchanged += 1
                continue
            previous = before.object_id if before is not None else None
            await table.link(session, row.slack_user_id, row.object_id, keep_upn, linked_by=actor)
            data: dict[str, Any] = {"slack_user_id": row.slack_user_id, "object_id": row.object_id}
            if keep_upn:
                data["upn"] = keep_upn
            if previous is not None:
                data["previous_object_id"] = previous
            await audit.append(session, audit.Entry(actor=actor, action="person.linked", data=data))
            if before is None:
                added += 1
            else:
                updated += 1
    return Linked(added, updated, unchanged)


async def unlink(db: Database, slack_user_id: str, *, actor: str) -> Person | None:
    """Remove the user's link (audited as `person.unlinked`); None when there was none."""
    async with db.write() as session:
        gone = await table.unlink(session, slack_user_id)
        if gone is not None:
            data = {"slack_user_id": slack_user_id, "object_id": gone.object_id}
            await audit.append(session, audit.Entry(actor=actor, action="person.unlinked", data=data))
    return gone


async def everyone(db: Database) -> list[Person]:
    async with db.read() as session:
        return await table.everyone(session)


async def lookup_upn(
    settings: Settings, name: str, *, transport: Any | None = None, credential: Any | None = None
) -> str:
    """The object ID of the user `name` (a UPN), from Microsoft Graph
    (`GET /v1.0/users/{upn}?$select=id,userPrincipalName`), signed in as the bot's identity through
    azure-core's pipeline (`transport`: its hook; the tests replay Graph there). One bounded call; a
    failure is a BadInput naming what to do, never a secret."""
    graph = GRAPH.get(settings.azure_cloud)
    if settings.azure_arm_url is not None or graph is None:
        raise BadInput(
            f"cannot look {name} up: Microsoft Graph is only known for DPOR_AZURE_CLOUD public, china and "
            "usgov. Link with the object ID instead (Entra ID, the user's Overview page)."
        )
    try:
        from azure.core import AsyncPipelineClient
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
        from azure.core.rest import HttpRequest
        from azure.identity.aio import DefaultAzureCredential
    except ImportError:
        raise ConfigError(
            "looking up a UPN needs the Azure SDK: pip install 'dpor-bot[azure]', or link with the object ID"
        ) from None
    from bot.providers.arm import cloud_from

    owned = None
    if credential is None:
        owned = credential = DefaultAzureCredential(authority=cloud_from(settings).authority_host)
    policies = [AsyncBearerTokenCredentialPolicy(credential, f"{graph}/.default")]
    request = HttpRequest(
        "GET", f"{graph}/v1.0/users/{quote(name, safe='@')}", params={"$select": "id,userPrincipalName"}
    )
    instead = "Link with the object ID instead (Entra ID, the user's Overview page)."
    try:
        async with (
            asyncio.timeout(GRAPH_TIMEOUT),
            AsyncPipelineClient(graph, policies=policies, transport=transport) as client,
        ):
            response = await client.send_request(request)
            await response.read()
    except TimeoutError:
        raise BadInput(f"Microsoft Graph did not answer within {GRAPH_TIMEOUT:.0f} s. {instead}") from None
    except ClientAuthenticationError as exc:
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"cannot sign in to Microsoft Graph as the bot's identity ({why}). {instead}"
        ) from None
    except AzureError as exc:
        raise BadInput(f"cannot reach Microsoft Graph ({type(exc).__name__}). {instead}") from None
    finally:
        if owned is not None:
            await owned.close()
    if response.status_code == 404:
        raise BadInput(f"there is no user {name} in the directory (Microsoft Graph: 404). Check the UPN.")
    if response.status_code in (401, 403):
        raise BadInput(
            "Microsoft Graph refused to read users: the bot's identity needs the User.Read.All "
            f"application permission (Microsoft Graph) to look up a UPN. {instead}"
        )
    if response.status_code != 200:
        raise BadInput(f"Microsoft Graph answered {response.status_code}. {instead}")
    found = object_id(str((response.json() or {}).get("id") or ""))
    if found is None:
        raise BadInput(f"Microsoft Graph returned no object ID for {name}. {instead}")
    return found
