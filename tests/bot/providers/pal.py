"""Partner Admin Link offline: azure-core's transport hook replaying the service's real response shapes.

The bodies are those of the REST spec's examples (Microsoft.ManagementPartner, api-version 2018-02-01:
PutPartnerDetails.json, PatchPartnerDetails.json, GetPartnerDetailsNoPartnerId.json) and ARM's error
envelope `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import case_insensitive_dict

TENANT = "1b1121dd-6900-412a-af73-e8d44f81e1c1"
OBJECT = "aa67f786-0552-423e-8849-244ed12bf581"
CLIENT = "5d7e3c4f-0b1a-4c2d-9e8f-123456789abc"
CLIENT_SECRET = "pal-client-secret-Zq8~not-for-logs"
ARM = "https://management.azure.com"
PARTNERS = "/providers/Microsoft.ManagementPartner/partners"


def link(partner_id: str, partner_name: str) -> dict[str, Any]:
    """A PartnerResponse as the service returns it (the spec's example, with this test's IDs)."""
    return {
        "id": f"/providers/microsoft.managementpartner/partners/{partner_id}",
        "type": "Microsoft.ManagementPartner/partner",
        "name": partner_id,
        "etag": 3,
        "properties": {
            "partnerId": partner_id,
            "partnerName": partner_name,
            "tenantId": TENANT,
            "objectId": OBJECT,
            "version": "3",
            "updatedTime": "2018-01-20T01:52:57.9126052Z",
            "createdTime": "2018-01-20T01:23:40.5280496Z",
            "state": "Active",
        },
    }


def arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


HANG = object()
"""A scripted answer that never comes (the provider's timeout must end the call)."""


def ok(partner_id: str, partner_name: str) -> Answer:
    return Answer(200, link(partner_id, partner_name))


def not_linked() -> Answer:
    return Answer(
        404,
        arm_error("ManagementPartnerNotFound", "The management partner was not found for the caller."),
    )


def partner_id_invalid(partner_id: str) -> Answer:
    return Answer(400, arm_error("PartnerIdInvalid", f"The partner id '{partner_id}' is invalid."))


def unauthorised() -> Answer:
    return Answer(
        401,
        arm_error("InvalidAuthenticationToken", "The access token is invalid."),
        {
            "WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", '
            'error="invalid_token", error_description="The access token is invalid."'
        },
    )


def throttled(seconds: int) -> Answer:
    return Answer(
        429,
        arm_error("TooManyRequests", "The request is throttled; retry later."),
        {"Retry-After": str(seconds)},
    )


def server_error() -> Answer:
    return Answer(500, arm_error("InternalServerError", "Encountered internal server error."))


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


def _body(content: Any) -> bytes:
    """The bytes on the wire: a form (azure-identity's token request) is url-encoded."""
    if isinstance(content, dict):
        return urlencode(content).encode()
    if isinstance(content, bytes):
        return content
    return str(content or "").encode()


class _Response(AsyncHttpResponseImpl):
    def __init__(self, request: HttpRequest, answer: Answer) -> None:
        content = b"" if answer.body is None else json.dumps(answer.body).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **answer.headers}
        super().__init__(
            request=request,
            internal_response=None,
            status_code=answer.status,
            reason="",
            content_type=headers["Content-Type"],
            headers=case_insensitive_dict(headers),
            stream_download_generator=None,
        )
        self._content = content

    async def close(self) -> None:
        self._is_closed = True


class Replay(AsyncHttpTransport):
    """Answers ARM from a script and Microsoft Entra ID's token endpoint with a token (or `token_answer`)."""

    def __init__(self, *answers: Answer | BaseException | object) -> None:
        self.script: deque[Answer | BaseException | object] = deque(answers)
        self.arm: list[Seen] = []
        self.tokens: list[Seen] = []
        self.token_answer: Answer | None = None
        # Given when the script has run out (a target that keeps saying the same).
        self.otherwise: Answer | None = None

    def then(self, *answers: Answer | BaseException | object) -> Replay:
        self.script.extend(answers)
        return self

    async def send(self, request: HttpRequest, **kwargs: Any) -> _Response:
        parts = urlsplit(request.url)
        seen = Seen(
            request.method,
            parts.path,
            parse_qs(parts.query),
            dict(request.headers),
            _body(request.content),
        )
        if parts.netloc == "login.microsoftonline.com":
            self.tokens.append(seen)
            return _Response(
                request,
                self.token_answer
                or Answer(
                    200, {"token_type": "Bearer", "expires_in": 3599, "access_token": "replayed-token"}
                ),
            )
        assert f"{parts.scheme}://{parts.netloc}" == ARM, request.url
        self.arm.append(seen)
        if not self.script and self.otherwise is None:
            raise AssertionError(f"unscripted request {request.method} {request.url}")
        answer = self.script.popleft() if self.script else self.otherwise
        if answer is HANG:
            await asyncio.sleep(3600)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, Answer)
        return _Response(request, answer)

    def calls(self) -> list[str]:
        """What ARM was asked, as `METHOD path`."""
        return [f"{s.method} {s.path}" for s in self.arm]

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> Replay:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


def install(monkeypatch: pytest.MonkeyPatch, replay: Replay) -> Replay:
    """Every azure provider built from now on (by Bot, CLI or tests) talks to `replay`."""
    import bot.providers as providers

    real = providers._build

    def build(name: str, settings: Any, db: Any) -> Any:
        provider = real(name, settings, db)
        if name == "azure":
            provider.transport = replay
        return provider

    monkeypatch.setattr(providers, "_build", build)
    return replay


def identities_file(directory: Any, entries: dict[str, Any] | None = None) -> str:
    """A DPOR_AZURE_CREDENTIALS_FILE with one client-secret identity for every subscription."""
    path = directory / "azure-identities.json"
    path.write_text(
        json.dumps(
            entries
            if entries is not None
            else {"*": {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": CLIENT_SECRET}}
        )
    )
    return str(path)
