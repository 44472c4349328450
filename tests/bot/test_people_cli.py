"""`dpor-bot people`: link, import, unlink, list; audited; bad input refused in one line with nothing written.

The CLI runs as a subprocess against a real database; a UPN is looked up in Microsoft Graph replayed
through azure-core's transport hook (in process, with click's CliRunner)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from azure.core.pipeline.transport import AsyncHttpTransport
from click.testing import CliRunner
from sqlalchemy import select

from bot import cli
from bot import people as people_module
from storage.models import AuditEvent, Person
from tests.bot.providers.arm_replay import FakeCredential
from tests.bot.providers.pal import Answer, _Response
from tests.processes import dpor_bot, ok, query, refused, table_rows

OID = "0c1f6e6a-2c1d-4f57-9a7e-1f8c2d3e4a5b"
OTHER = "0c1f6e6a-2c1d-4f57-9a7e-1f8c2d3e4a5c"


def people_rows(url: str) -> list[tuple[str, str, str | None]]:
    return [tuple(r) for r in query(url, select(Person.slack_user_id, Person.object_id, Person.upn))]


def audited(url: str) -> list[tuple[str, dict[str, Any]]]:
    rows = query(url, select(AuditEvent.action, AuditEvent.data).order_by(AuditEvent.seq))
    return [(action, data) for action, data in rows if action.startswith("person.")]


def test_link_unlink_and_list(sqlite_url: str, tmp_path: Path) -> None:
    # Fullwidth digits and braces, upper case: folded with NFKC to the GUID as Azure writes it.
    typed = "｛" + OID.upper().replace("0", "０") + "｝"
    assert ok(dpor_bot("people", "link", "<@U0ALICE|alice>", typed, url=sqlite_url, cwd=tmp_path)) == (
        f"linked U0ALICE to {OID}\n"
    )
    assert "unchanged" in ok(dpor_bot("people", "link", "U0ALICE", OID, url=sqlite_url, cwd=tmp_path))
    assert "linked U0ALICE" in ok(dpor_bot("people", "link", "U0ALICE", OTHER, url=sqlite_url, cwd=tmp_path))
    listed = table_rows(ok(dpor_bot("people", "list", url=sqlite_url, cwd=tmp_path)))
    assert [row[:2] for row in listed] == [["U0ALICE", OTHER]]
    assert ok(dpor_bot("people", "unlink", "U0ALICE", url=sqlite_url, cwd=tmp_path)).startswith(
        "unlinked U0ALICE"
    )
    assert "was not linked" in ok(dpor_bot("people", "unlink", "U0ALICE", url=sqlite_url, cwd=tmp_path))
    assert people_rows(sqlite_url) == []
    assert [(a, d.get("object_id"), d.get("previous_object_id")) for a, d in audited(sqlite_url)] == [
        ("person.linked", OID, None),
        ("person.linked", OTHER, OID),
        ("person.unlinked", OTHER, None),
    ]
    assert "no people linked" in ok(dpor_bot("people", "list", url=sqlite_url, cwd=tmp_path))


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["people", "link", "alice", OID], "'alice' is not a Slack user ID"),
        (["people", "link", "U0ALICE", "alice"], "is neither an object ID"),
        (["people", "link", "U0ALICE", "1234-5678"], "is neither an object ID"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(
    sqlite_url: str, tmp_path: Path, args: list[str], said: str
) -> None:
    assert said in refused(dpor_bot(*args, url=sqlite_url, cwd=tmp_path))
    assert people_rows(sqlite_url) == [] and audited(sqlite_url) == []


def test_import_is_all_or_nothing_and_safe_to_rerun(database_url: str, tmp_path: Path) -> None:
    good = tmp_path / "people.csv"
    good.write_text(
        f"slack_user_id,object_id,upn\nU0ALICE,{OID},alice@contoso.com\n\n<@U0BOB>,{OTHER.upper()},\n",
        encoding="utf-8",
    )
    assert ok(dpor_bot("people", "import", str(good), url=database_url, cwd=tmp_path)) == (
        "linked 2, updated 0, unchanged 0\n"
    )
    assert ok(dpor_bot("people", "import", str(good), url=database_url, cwd=tmp_path)) == (
        "linked 0, updated 0, unchanged 2\n"
    )
    assert sorted(people_rows(database_url)) == [
        ("U0ALICE", OID, "alice@contoso.com"),
        ("U0BOB", OTHER, None),
    ]
    cases = {
        "slack,object\nU0CAROL,x\n": "people.csv, line 1: expected the header row slack_user_id,object_id",
        f"slack_user_id,object_id\nU0CAROL,{OID}\nU0DAN,not-a-guid\n": "line 3: 'not-a-guid' is not",
        f"slack_user_id,object_id\nU0CAROL,{OID}\nU0CAROL,{OTHER}\n": "line 3: U0CAROL is already on line 2",
        f"slack_user_id,object_id,upn\nU0CAROL,{OID},carol\n": "line 2: 'carol' is not a UPN",
        f"slack_user_id,object_id\nU0CAROL,{OID},extra\n": "line 2: expected 2 fields, found 3",
    }
    for text, said in cases.items():
        good.write_text(text, encoding="utf-8")
        assert said in refused(dpor_bot("people", "import", str(good), url=database_url, cwd=tmp_path))
    assert len(people_rows(database_url)) == 2 and len(audited(database_url)) == 2


def test_roles_grant_and_revoke_are_refused_with_azure_roles(sqlite_url: str, tmp_path: Path) -> None:
    env = {"DPOR_ROLE_SOURCE": "azure"}
    for verb in ("grant", "revoke"):
        line = refused(dpor_bot("roles", verb, "U0ALICE", "owner", url=sqlite_url, cwd=tmp_path, env=env))
        assert "Roles come from Azure RBAC" in line


class FakeGraph(AsyncHttpTransport):
    """Microsoft Graph's users endpoint: GET /v1.0/users/{upn}?$select=id,userPrincipalName."""

    def __init__(self, users: dict[str, str], answer: Answer | None = None) -> None:
        self.users, self.answer, self.seen = users, answer, []

    async def send(self, request: Any, **kwargs: Any) -> _Response:
        parts = urlsplit(request.url)
        self.seen.append(
            (parts.netloc, parts.path, parse_qs(parts.query), request.headers.get("Authorization"))
        )
        if self.answer is not None:
            return _Response(request, self.answer)
        name = unquote(parts.path.rsplit("/", 1)[-1])  # as Graph reads it: `%23EXT%23` is `#EXT#`
        if name.lower() not in self.users:
            return _Response(
                request,
                Answer(
                    404,
                    {
                        "error": {
                            "code": "Request_ResourceNotFound",
                            "message": f"Resource '{name}' does not exist or one of its queried "
                            "reference-property objects are not present.",
                        }
                    },
                ),
            )
        body = {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,userPrincipalName)/$entity",
            "id": self.users[name.lower()],
            "userPrincipalName": name,
        }
        return _Response(request, Answer(200, body))

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> FakeGraph:
        return self

    async def __aexit__(self, *args: object) -> None:
        pass


def link_by_upn(monkeypatch: pytest.MonkeyPatch, url: str, graph: FakeGraph, upn: str) -> Any:
    real = people_module.lookup_upn
    monkeypatch.setattr(
        people_module, "lookup_upn", functools.partial(real, transport=graph, credential=FakeCredential())
    )
    return CliRunner().invoke(cli.cli, ["people", "link", "U0ALICE", upn], env={"DATABASE_URL": url})


def test_a_upn_is_looked_up_in_microsoft_graph(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    graph = FakeGraph({"alice@contoso.com": OID})
    result = link_by_upn(monkeypatch, sqlite_url, graph, "alice@contoso.com")
    assert result.exit_code == 0, result.output
    assert f"linked U0ALICE to {OID} (alice@contoso.com)" in result.output
    host, path, params, auth = graph.seen[0]
    assert (host, path, params["$select"]) == (
        "graph.microsoft.com",
        "/v1.0/users/alice@contoso.com",
        ["id,userPrincipalName"],
    )
    assert auth == "Bearer replayed-arm-token"
    assert people_rows(sqlite_url) == [("U0ALICE", OID, "alice@contoso.com")]
    assert json.dumps(audited(sqlite_url)[0][1]).count("alice@contoso.com") == 1


def test_a_guests_upn_is_looked_up_with_its_hash_signs_encoded(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """A B2B guest's UPN (`alice_fabrikam.com#EXT#@contoso.onmicrosoft.com`) is a UPN: Graph finds it when the
    `#` is sent as %23 (a bare `#` would end the URL's path)."""
    guest = "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    graph = FakeGraph({guest.lower(): OID})
    result = link_by_upn(monkeypatch, sqlite_url, graph, guest)
    assert result.exit_code == 0, result.output
    assert graph.seen[0][1] == "/v1.0/users/alice_fabrikam.com%23EXT%23@contoso.onmicrosoft.com"
    assert people_rows(sqlite_url) == [("U0ALICE", OID, guest)]


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (None, "there is no user bob@contoso.com in the directory"),
        (
            Answer(
                403,
                {
                    "error": {
                        "code": "Authorization_RequestDenied",
                        "message": "Insufficient privileges to complete the operation.",
                    }
                },
            ),
            "needs the User.Read.All application permission",
        ),
    ],
)
def test_a_upn_graph_cannot_resolve_is_refused(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, answer: Answer | None, said: str
) -> None:
    result = link_by_upn(monkeypatch, sqlite_url, FakeGraph({}, answer), "bob@contoso.com")
    assert result.exit_code == 1 and said in result.output, result.output
    assert "Traceback" not in result.output and "replayed-arm-token" not in result.output
    assert people_rows(sqlite_url) == []
