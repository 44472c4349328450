"""Role assignments offline: a stand-in for ARM behind azure-core's transport hook.

`FakeArm` keeps role assignments as ARM does and answers Microsoft.Authorization/roleAssignments
(api-version 2022-04-01) with the REST spec's shapes (RoleAssignments_ListForSubscription.json,
RoleAssignments_CreateForSubscription.json, RoleAssignments_DeleteById.json): lists in pages with
`nextLink`, `assignedTo('{id}')` including the principal's groups, PUT 201 and 409 RoleAssignmentExists,
DELETE 200 with the body or 204 when there is none. `faults` answers the next requests instead
(429 with Retry-After, 5xx, 403 AuthorizationFailed, HANG); `delay` makes every answer slow.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest

from tests.bot.providers.pal import HANG, Answer, Seen, _body, _Response, arm_error

ARM = "https://management.azure.com"
ROLES = "/providers/Microsoft.Authorization/roleAssignments"
DEFINITIONS = "/providers/Microsoft.Authorization/roleDefinitions"
OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42a0-ab88-20f7382dd24c"
UAA = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
READER = "acdd72a7-3385-48ef-bd42-f606fba81ae7"
BOT_OBJECT = "3c1f0c6e-9b1d-4c56-8a7e-5e9d2a4f7b10"
MANAGEMENT_GROUP = "/providers/Microsoft.Management/managementGroups/contoso-root"

__all__ = ["HANG", "Answer", "FakeArm", "FakeCredential", "install"]


def throttled(seconds: int) -> Answer:
    return Answer(
        429,
        arm_error(
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation type - "
            "Read_ObservationWindow_00:05:00.",
        ),
        {"Retry-After": str(seconds)},
    )


def server_error() -> Answer:
    return Answer(
        500,
        arm_error(
            "InternalServerError",
            "Encountered internal server error. Diagnostic information: timestamp '20261130T221500Z'.",
        ),
    )


def forbidden(action: str, scope: str) -> Answer:
    """ARM's 403 when the caller lacks `action` on `scope`."""
    return Answer(
        403,
        arm_error(
            "AuthorizationFailed",
            f"The client '{BOT_OBJECT}' with object id '{BOT_OBJECT}' does not have authorization to perform "
            f"action '{action}' over scope '{scope}' or the scope is invalid. "
            "If access was recently granted, please refresh your credentials.",
        ),
    )


def principal_not_found(principal_id: str) -> Answer:
    return Answer(
        400,
        arm_error(
            "PrincipalNotFound",
            f"Principal {principal_id.replace('-', '')} does not exist in the directory {uuid.uuid4()}. "
            "Check that you have the correct principal ID.",
        ),
    )


class FakeCredential:
    """The bot's identity in tests: a token without a sign-in (counts its uses)."""

    def __init__(self) -> None:
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken("replayed-arm-token", int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> FakeCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


@dataclass
class FakeArm(AsyncHttpTransport):
    """ARM's role assignments for every subscription, in memory."""

    arm_url: str = ARM
    page_size: int = 2
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A principal's groups (transitively): assignedTo('{principal}') includes the groups' rows.
    groups: dict[str, list[str]] = field(default_factory=dict)
    faults: deque[Answer | BaseException | object] = field(default_factory=deque)
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)

    def add(
        self,
        scope: str,
        principal_id: str,
        role: str,
        principal_type: str = "User",
        name: str | None = None,
    ) -> str:
        """An assignment made outside the bot (by the portal, another tool); returns its ID."""
        name = name or str(uuid.uuid4())
        definition = f"{scope if scope.startswith('/subscriptions/') else ''}{DEFINITIONS}/{role}"
        row = _assignment(scope, name, definition, principal_id, principal_type)
        self.rows[row["id"].lower()] = row
        return row["id"]

    def fail(self, *answers: Answer | BaseException | object) -> FakeArm:
        self.faults.extend(answers)
        return self

    def on(self, subscription_id: str) -> list[dict[str, Any]]:
        """The rows at `/subscriptions/{id}` exactly (what the bot made or left there)."""
        scope = f"/subscriptions/{subscription_id}".lower()
        return [r for r in self.rows.values() if r["properties"]["scope"].lower() == scope]

    def calls(self) -> list[str]:
        return [f"{s.method} {s.path}" for s in self.seen]

    async def send(self, request: HttpRequest, **kwargs: Any) -> _Response:
        parts = urlsplit(request.url)
        assert f"{parts.scheme}://{parts.netloc}" == self.arm_url, request.url
        seen = Seen(
            request.method,
            parts.path,
            parse_qs(parts.query),
            dict(request.headers),
            _body(getattr(request, "content", None) or getattr(request, "body", None)),
        )
        self.seen.append(seen)
        assert seen.query.get("api-version") == ["2022-04-01"], request.url
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.faults:
            fault = self.faults.popleft()
            if fault is HANG:
                await asyncio.sleep(3600)
            if isinstance(fault, BaseException):
                raise fault
            assert isinstance(fault, Answer)
            return _Response(request, fault)
        return _Response(request, self._answer(seen))

    def _answer(self, seen: Seen) -> Answer:
        path = "/" + seen.path.lstrip("/")
        if seen.method == "GET" and path.lower().endswith(ROLES.lower()):
            return self._list(path[: -len(ROLES)], seen.query)
        if seen.method == "PUT" and ROLES.lower() + "/" in path.lower():
            return self._put(path, json.loads(seen.body or b"{}"))
        if seen.method == "DELETE" and ROLES.lower() + "/" in path.lower():
            gone = self.rows.pop(path.lower(), None)
            return Answer(200, gone) if gone is not None else Answer(204)
        raise AssertionError(f"unexpected ARM call {seen.method} {seen.path}")

    def _list(self, scope: str, query: dict[str, list[str]]) -> Answer:
        """Every row at, above or below the subscription (ARM's list without atScope()), paged."""
        sub = scope.lower()
        rows = [
            r
            for r in self.rows.values()
            if (s := r["properties"]["scope"].lower()) == "/"
            or s.startswith("/providers/microsoft.management/")
            or s == sub
            or s.startswith(sub + "/")
        ]
        wanted = (query.get("$filter") or [""])[0]
        if wanted.startswith("assignedTo('"):
            principal = wanted[len("assignedTo('") : -2].lower()
            who = {principal, *(g.lower() for g in self.groups.get(principal, []))}
            rows = [r for r in rows if r["properties"]["principalId"].lower() in who]
        else:
            assert not wanted, f"unexpected $filter {wanted}"
        start = int((query.get("$skiptoken") or ["0"])[0])
        page = rows[start : start + self.page_size]
        body: dict[str, Any] = {"value": page}
        if start + self.page_size < len(rows):
            params = {"api-version": "2022-04-01", "$skiptoken": str(start + self.page_size)}
            if wanted:
                params["$filter"] = wanted
            body["nextLink"] = f"{self.arm_url}{scope}{ROLES}?{urlencode(params)}"
        return Answer(200, body)

    def _put(self, path: str, body: dict[str, Any]) -> Answer:
        scope, name = path.rsplit(ROLES + "/", 1)
        props = body["properties"]
        for r in self.rows.values():
            p = r["properties"]
            if (
                p["scope"].lower() == scope.lower()
                and p["principalId"].lower() == props["principalId"].lower()
                and p["roleDefinitionId"].rsplit("/", 1)[-1] == props["roleDefinitionId"].rsplit("/", 1)[-1]
            ):
                return Answer(409, arm_error("RoleAssignmentExists", "The role assignment already exists."))
        row = _assignment(
            scope, name, props["roleDefinitionId"], props["principalId"], props.get("principalType") or "User"
        )
        self.rows[row["id"].lower()] = row
        return Answer(201, row)

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> FakeArm:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


def _assignment(
    scope: str, name: str, definition: str, principal_id: str, principal_type: str
) -> dict[str, Any]:
    """A RoleAssignment as ARM returns it (the spec's example's fields)."""
    return {
        "properties": {
            "roleDefinitionId": definition,
            "principalId": principal_id,
            "principalType": principal_type,
            "scope": scope,
            "condition": None,
            "conditionVersion": None,
            "createdOn": "2026-11-30T20:15:37.6483262Z",
            "updatedOn": "2026-11-30T20:15:37.6483262Z",
            "createdBy": BOT_OBJECT,
            "updatedBy": BOT_OBJECT,
            "delegatedManagedIdentityResourceId": None,
            "description": None,
        },
        "id": f"{'' if scope == '/' else scope}{ROLES}/{name}",
        "type": "Microsoft.Authorization/roleAssignments",
        "name": name,
    }


def install(
    monkeypatch: pytest.MonkeyPatch, fake: FakeArm, credential: FakeCredential | None = None
) -> FakeArm:
    """Every Arm built from now on (by the providers, the role source, the CLI) talks to `fake`."""
    from bot.providers import arm

    real = arm.Arm.__init__
    signed = credential or FakeCredential()

    def init(self: Any, settings: Any, *, transport: Any = None, credential: Any = None) -> None:
        real(self, settings, transport=transport or fake, credential=credential or signed)

    monkeypatch.setattr(arm.Arm, "__init__", init)
    return fake
