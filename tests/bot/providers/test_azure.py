"""The azure provider offline: azure-core's transport hook replays Partner Admin Link's real responses."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceResponseTimeoutError
from sqlalchemy import select

from bot import audit
from bot.providers import ProviderError
from bot.providers.azure import AzureProvider, _failure
from bot.settings import ConfigError, load_settings
from storage.models import AuditEvent, ChangeRequest, OutboxMessage, utcnow
from tests.bot.providers.conftest import (
    ADMIN,
    NEW,
    NOTIFY,
    OLD,
    OTHER,
    SUB,
    World,
    make_world,
    since,
    when,
)
from tests.bot.providers.pal import (
    CLIENT,
    CLIENT_SECRET,
    HANG,
    OBJECT,
    PARTNERS,
    TENANT,
    Answer,
    Replay,
    identities_file,
    not_linked,
    ok,
    partner_id_invalid,
    server_error,
    throttled,
    unauthorised,
)

API = {"api-version": ["2018-02-01"]}


@pytest.fixture
async def world(sqlite_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """For the provider alone: one engine is enough."""
    async for w in make_world(
        sqlite_url, DPOR_PROVIDER="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        yield w


@pytest.fixture
async def world_any(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """Through the worker and the database: every engine."""
    async for w in make_world(
        database_url, DPOR_PROVIDER="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        yield w


def azure(world: World, replay: Replay) -> AzureProvider:
    provider = world.providers.get("azure")
    assert isinstance(provider, AzureProvider)
    provider.transport = replay
    return provider


async def test_update_replaces_the_identitys_link_and_reads_it_back(world: World) -> None:
    replay = Replay(ok(OLD, "Fabrikam Consulting"), ok(NEW, "Contoso MSP"), ok(NEW, "Contoso MSP"))
    state = await azure(world, replay).apply(SUB, NEW)

    assert replay.calls() == [f"GET {PARTNERS}", f"PATCH {PARTNERS}/{NEW}", f"GET {PARTNERS}"]
    assert all(seen.query == API for seen in replay.arm)
    assert all(seen.headers["Authorization"] == "Bearer replayed-token" for seen in replay.arm)
    # Signed in as the configured service principal, in its tenant, with its secret.
    token = replay.tokens[0]
    assert token.path == f"/{TENANT}/oauth2/v2.0/token"
    form = parse_qs(token.body.decode())
    assert form["client_id"] == [CLIENT] and form["client_secret"] == [CLIENT_SECRET]
    assert form["scope"] == ["https://management.azure.com/.default"]

    assert state.partner_id == NEW and state.partner_name == "Contoso MSP"
    assert state.identity["tenant_id"] == TENANT and state.identity["object_id"] == OBJECT
    assert state.identity["client_id"] == CLIENT and state.identity["credential"] == "client secret"
    assert state.detail == {}  # the service's name is the directory's


async def test_no_link_yet_is_created_then_read_back(world: World) -> None:
    replay = Replay(not_linked(), ok(NEW, "Contoso MSP Ltd"), ok(NEW, "Contoso MSP Ltd"))
    state = await azure(world, replay).apply(SUB, NEW)

    assert replay.calls() == [f"GET {PARTNERS}", f"PUT {PARTNERS}/{NEW}", f"GET {PARTNERS}"]
    assert state.partner_name == "Contoso MSP Ltd"
    assert state.detail == {"directory_name": "Contoso MSP", "name_differs": True}


async def test_a_link_already_there_is_only_read(world: World) -> None:
    replay = Replay(ok(NEW, "Contoso MSP"), ok(NEW, "Contoso MSP"))
    state = await azure(world, replay).apply(SUB, NEW)
    assert replay.calls() == [f"GET {PARTNERS}", f"GET {PARTNERS}"]
    assert state.partner_id == NEW


async def test_a_link_made_meanwhile_is_updated(world: World) -> None:
    replay = Replay(
        not_linked(),
        Answer(409, {"error": {"code": "Conflict", "message": "The partner already exists."}}),
        ok(NEW, "Contoso MSP"),
        ok(NEW, "Contoso MSP"),
    )
    await azure(world, replay).apply(SUB, NEW)
    assert replay.calls() == [
        f"GET {PARTNERS}",
        f"PUT {PARTNERS}/{NEW}",
        f"PATCH {PARTNERS}/{NEW}",
        f"GET {PARTNERS}",
    ]


async def test_a_read_back_that_disagrees_is_retried(world: World) -> None:
    replay = Replay(ok(OLD, "Fabrikam"), ok(NEW, "Contoso MSP"), ok(OLD, "Fabrikam"))
    with pytest.raises(ProviderError) as caught:
        await azure(world, replay).apply(SUB, NEW)
    assert caught.value.retryable and OLD in caught.value.message


async def test_partner_id_invalid_fails_with_the_id(world: World) -> None:
    replay = Replay(ok(OLD, "Fabrikam"), partner_id_invalid("999999"))
    with pytest.raises(ProviderError) as caught:
        await azure(world, replay).apply(SUB, "999999")
    assert not caught.value.retryable
    assert caught.value.message.startswith("Microsoft does not recognise partner ID 999999")


async def test_401_fails_with_a_hint_about_the_credential(world: World) -> None:
    with pytest.raises(ProviderError) as caught:
        await azure(world, Replay(unauthorised())).apply(SUB, NEW)
    assert not caught.value.retryable
    message = caught.value.message
    assert "HTTP 401" in message and CLIENT in message and TENANT in message
    assert "client secret or certificate" in message


async def test_403_fails_with_a_hint_about_the_role(world: World) -> None:
    forbidden = Answer(
        403,
        {"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization."}},
    )
    with pytest.raises(ProviderError) as caught:
        await azure(world, Replay(forbidden)).apply(SUB, NEW)
    assert not caught.value.retryable
    assert "HTTP 403 AuthorizationFailed" in caught.value.message
    assert "role" in caught.value.message and SUB in caught.value.message


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (throttled(7), 7.0),
        (server_error(), None),
        (Answer(503, None, {"Retry-After": "2"}), 2.0),
        (ServiceResponseTimeoutError("read timed out"), None),
    ],
    ids=["429", "500", "503", "transport-timeout"],
)
async def test_transient_failures_are_retryable(
    world: World, answer: object, retry_after: float | None
) -> None:
    with pytest.raises(ProviderError) as caught:
        await azure(world, Replay(answer)).apply(SUB, NEW)
    assert caught.value.retryable
    assert caught.value.retry_after == retry_after


def test_no_usable_default_credential_says_how_to_configure_one() -> None:
    unavailable = ClientAuthenticationError(
        "DefaultAzureCredential failed to retrieve a token from the included credentials."
    )
    failure = _failure(unavailable, None, SUB, NEW, 30.0)
    assert not failure.retryable
    assert failure.message.startswith("the default Azure credential could not sign in for subscription")
    assert "DPOR_AZURE_CREDENTIALS_FILE" in failure.message


async def test_current_reads_the_link_or_none(world: World) -> None:
    provider = azure(world, Replay(ok(OLD, "Fabrikam Consulting"), not_linked()))
    now = await provider.current(SUB)
    assert (now.partner_id, now.partner_name, now.identity["object_id"]) == (
        OLD,
        "Fabrikam Consulting",
        OBJECT,
    )
    assert (await provider.current(SUB)).partner_id is None


# Through the outbox worker: how retries, backoff and failure reach the request, the audit and Slack.


async def test_429_with_retry_after_then_200_is_applied(world: World) -> None:
    replay = Replay(throttled(7), ok(OLD, "F"), ok(NEW, "Contoso MSP"), ok(NEW, "Contoso MSP"))
    azure(world, replay)
    rid = await world.approved()
    worker = world.worker()

    started = utcnow()
    await world.drive(worker)
    row = await world.apply_row(rid)
    assert row.status == "pending" and "HTTP 429" in (row.last_error or "")
    assert since(row.available_at, started) > 6.0 and when(row.available_at) <= 7.0  # Retry-After
    assert (await world.request(rid)).status == "applying"

    await world.time_passes(rid)
    await world.drive(worker)
    req = await world.request(rid)
    assert req.status == "applied" and req.apply_attempts == 2
    assert (await world.subscription()).partner_id == NEW
    assert len(replay.arm) == 4


async def test_500_twice_then_200_backs_off_exponentially(world_any: World) -> None:
    replay = Replay(
        server_error(),
        server_error(),
        not_linked(),
        ok(NEW, "Contoso MSP Ltd"),
        ok(NEW, "Contoso MSP Ltd"),
    )
    azure(world_any, replay)
    rid = await world_any.approved()
    worker = world_any.worker()
    waits = []
    for _ in range(2):
        started = utcnow()
        await world_any.drive(worker)
        row = await world_any.apply_row(rid)
        assert row.status == "pending" and "HTTP 500" in (row.last_error or "")
        waits.append((since(row.available_at, started), when(row.available_at)))
        await world_any.time_passes(rid)
    (low1, high1), (low2, high2) = waits  # backoff(1), backoff(2) with jitter
    assert low1 > 0.5 and high1 <= 2.0 and low2 > 1.5 and high2 <= 4.0
    await world_any.drive(worker)

    req = await world_any.request(rid)
    assert req.status == "applied" and req.apply_attempts == 3
    assert replay.calls()[-3:] == [f"GET {PARTNERS}", f"PUT {PARTNERS}/{NEW}", f"GET {PARTNERS}"]
    # What the service returned is recorded: the partner name, and who carries the link.
    assert req.result is not None
    assert req.result["partner_name"] == "Contoso MSP Ltd" and req.result["provider"] == "azure"
    assert req.result["identity"]["tenant_id"] == TENANT and req.result["identity"]["object_id"] == OBJECT
    (succeeded,) = await world_any.events("apply.succeeded")
    assert succeeded.data["partner_name"] == "Contoso MSP Ltd"
    assert succeeded.data["directory_name"] == "Contoso MSP" and succeeded.data["name_differs"] is True
    assert succeeded.data["identity"]["object_id"] == OBJECT
    assert (await audit.verify(world_any.db)).ok


async def test_a_timeout_is_retried(world: World) -> None:
    azure(world, Replay(HANG, ok(OLD, "F"), ok(NEW, "Contoso MSP"), ok(NEW, "Contoso MSP")))
    rid = await world.approved()
    worker = world.worker()
    await world.drive(worker)
    row = await world.apply_row(rid)
    assert row.status == "pending" and "did not answer within 0.3s" in (row.last_error or "")
    await world.time_passes(rid)
    await world.drive(worker)
    assert (await world.request(rid)).status == "applied"


async def test_retries_are_bounded_then_the_request_fails_visibly(world_any: World) -> None:
    replay = Replay()
    azure(world_any, replay)
    replay.otherwise = server_error()
    rid = await world_any.approved()
    worker = world_any.worker(max_attempts=3)
    for _ in range(3):
        await world_any.drive(worker)
        await world_any.time_passes(rid)

    req = await world_any.request(rid)
    assert req.status == "failed" and req.apply_attempts == 3
    assert req.error == "Azure Partner Admin Link is busy or unavailable (HTTP 500 InternalServerError)"
    assert len(replay.arm) == 3
    assert (await world_any.subscription()).partner_id is None
    (failed,) = await world_any.events("apply.failed")
    assert failed.data["error"] == req.error
    # The card shows the error and a Retry button; the requester and the notify channel hear of it.
    card = world_any.slack.message(req.card_channel, req.card_ts)
    shown = json.dumps(card.blocks)
    assert "Apply failed" in shown and "HTTP 500" in shown and '"action_id": "dpor_retry"' in shown
    assert any(
        "could not be applied" in m.text for m in world_any.slack.messages(world_any.slack.dm_channel(ADMIN))
    )
    assert any("could not be applied" in m.text for m in world_any.slack.messages(NOTIFY))


async def test_no_secret_reaches_a_log_or_a_message(world: World, caplog: pytest.LogCaptureFixture) -> None:
    replay = Replay()
    azure(world, replay)
    # Microsoft Entra ID refuses the secret (AADSTS7000215), as it does for an expired one.
    replay.token_answer = Answer(
        401,
        {
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
            "sent in the request is the client secret value, not the client secret ID.",
            "error_codes": [7000215],
        },
    )
    logging.getLogger("azure").setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG):
            rid = await world.approved()
            await world.drive(world.worker())
    finally:
        logging.getLogger("azure").setLevel(logging.WARNING)

    assert parse_qs(replay.tokens[0].body.decode())["client_secret"] == [CLIENT_SECRET]  # it was used
    req = await world.request(rid)
    assert req.status == "failed"
    assert "AADSTS7000215" in (req.error or "") and CLIENT in (req.error or "")
    assert caplog.records and CLIENT_SECRET not in caplog.text
    async with world.db.read() as session:
        stored = [json.dumps(e.data) for e in (await session.scalars(select(AuditEvent))).all()] + [
            json.dumps(r.payload) + (r.last_error or "")
            for r in (await session.scalars(select(OutboxMessage))).all()
        ]
        stored += [
            json.dumps(r.result) + (r.error or "")
            for r in (await session.scalars(select(ChangeRequest))).all()
        ]
    assert not any(CLIENT_SECRET in text for text in stored)
    assert not any(CLIENT_SECRET in json.dumps(call.params) for call in world.slack.calls)


async def test_the_subscription_column_chooses_the_provider(sqlite_url: str, tmp_path: Path) -> None:
    # DPOR_PROVIDER stays ledger; SUB's own provider (`subscriptions add --provider azure`) is azure.
    async for world in make_world(
        sqlite_url, column="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path)
    ):
        replay = Replay(not_linked(), ok(NEW, "Contoso MSP"), ok(NEW, "Contoso MSP"))
        azure(world, replay)
        rid = await world.approved()
        await world.drive(world.worker())
        assert (await world.request(rid)).status == "applied"
        assert len(replay.arm) == 3
        assert (await world.providers.for_subscription(OTHER)).name == "ledger"


async def test_each_subscription_signs_in_as_its_own_identity(sqlite_url: str, tmp_path: Path) -> None:
    other_tenant, other_client = (
        "22222222-3333-4444-5555-666666666666",
        "77777777-8888-9999-aaaa-bbbbbbbbbbbb",
    )
    entries = {
        f"tenant:{TENANT}": {"client_id": CLIENT, "client_secret": CLIENT_SECRET},
        SUB: f"tenant:{TENANT}",
        "*": {"tenant_id": other_tenant, "client_id": other_client, "client_secret": "another-secret"},
    }
    async for world in make_world(
        sqlite_url, DPOR_PROVIDER="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path, entries)
    ):
        replay = Replay(ok(OLD, "F"), ok(OLD, "F"))
        provider = azure(world, replay)
        await provider.current(SUB)
        await provider.current(OTHER)
        assert [t.path.split("/")[1] for t in replay.tokens] == [TENANT, other_tenant]
        assert [parse_qs(t.body.decode())["client_id"] for t in replay.tokens] == [[CLIENT], [other_client]]


async def test_a_certificate_identity_signs_an_assertion(sqlite_url: str, tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dpor-bot")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "pal.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    entries = {"*": {"tenant_id": TENANT, "client_id": CLIENT, "certificate_path": str(pem)}}
    async for world in make_world(
        sqlite_url, DPOR_PROVIDER="azure", DPOR_AZURE_CREDENTIALS_FILE=identities_file(tmp_path, entries)
    ):
        replay = Replay(ok(OLD, "F"))
        state = await azure(world, replay).current(SUB)
        form = parse_qs(replay.tokens[0].body.decode())
        assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assert "client_secret" not in form
        assert state.identity["credential"] == "certificate"


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            {"*": {"tenant_id": TENANT, "client_secret": CLIENT_SECRET}},
            "entry '*': client_id: Field required",
        ),
        (
            {"*": {"tenant_id": TENANT, "client_id": CLIENT}},
            "exactly one of client_secret and certificate_path",
        ),
        ({"prod": {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": CLIENT_SECRET}}, "key 'prod'"),
        ({SUB: f"tenant:{TENANT}"}, f"names tenant:{TENANT}, which is not given"),
        ({"*": {"tenant_id": "contoso", "client_id": CLIENT, "client_secret": CLIENT_SECRET}}, "not a GUID"),
    ],
)
def test_a_bad_identities_file_is_named_in_one_line_without_its_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, entries: dict, problem: str
) -> None:
    path = identities_file(tmp_path, entries)
    monkeypatch.setenv("DPOR_AZURE_CREDENTIALS_FILE", path)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith("DPOR_AZURE_CREDENTIALS_FILE: expected a JSON file of Azure identities")
    assert problem in message and "\n" not in message and repr(path) in message
    assert CLIENT_SECRET not in message


def test_identities_are_secret_in_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DPOR_AZURE_CREDENTIALS_FILE", identities_file(tmp_path))
    settings = load_settings()
    assert CLIENT_SECRET not in repr(settings) and CLIENT_SECRET not in str(settings.model_dump())
    assert settings.azure_identities["*"].client_secret is not None
