"""bot/providers/arm.py against ARM's role assignments replayed through azure-core's transport hook."""

from __future__ import annotations

import json
import logging

import pytest

from bot.azure_ids import BUILTIN_ROLES, guid, role_guid
from bot.providers import ProviderError
from bot.providers.arm import Arm, cloud_from
from bot.settings import ConfigError, Settings, load_settings
from tests.bot.providers import arm_replay
from tests.bot.providers.arm_replay import (
    CONTRIBUTOR,
    HANG,
    MANAGEMENT_GROUP,
    OWNER,
    READER,
    FakeArm,
    FakeCredential,
)

SUB = "11111111-2222-3333-4444-555555555555"
SCOPE = f"/subscriptions/{SUB}"
ALICE = "aaaaaaaa-0000-4000-8000-000000000001"
GROUP = "bbbbbbbb-0000-4000-8000-000000000002"
ROOTED = "cccccccc-0000-4000-8000-000000000003"
BELOW = "dddddddd-0000-4000-8000-000000000004"
PARTNER = "eeeeeeee-0000-4000-8000-000000000005"


def arm(fake: FakeArm, credential: FakeCredential | None = None, **env: str) -> Arm:
    settings = Settings(DPOR_PROVIDER_TIMEOUT=env.pop("timeout", "2"), **env)
    return Arm(settings, transport=fake, credential=credential or FakeCredential())


def test_clouds() -> None:
    assert cloud_from(Settings()).arm_url == "https://management.azure.com"
    china = cloud_from(Settings(DPOR_AZURE_CLOUD="China"))
    assert (china.arm_url, china.authority_host) == (
        "https://management.chinacloudapi.cn",
        "https://login.chinacloudapi.cn",
    )
    usgov = cloud_from(Settings(DPOR_AZURE_CLOUD="usgov"))
    assert usgov.authority_host == "https://login.microsoftonline.us"
    assert usgov.credential_scope == "https://management.usgovcloudapi.net/.default"
    custom = cloud_from(
        Settings(
            DPOR_AZURE_ARM_URL="https://arm.example.test/", DPOR_AZURE_AUTHORITY_HOST="https://login.test"
        )
    )
    assert (custom.arm_url, custom.credential_scope) == (
        "https://arm.example.test",
        "https://arm.example.test/.default",
    )
    with pytest.raises(ConfigError, match="DPOR_AZURE_AUTHORITY_HOST: set it too when DPOR_AZURE_ARM_URL"):
        cloud_from(Settings(DPOR_AZURE_ARM_URL="https://arm.example.test"))
    with pytest.raises(ConfigError, match="DPOR_AZURE_ARM_URL: set it too"):
        Arm(Settings(DPOR_AZURE_AUTHORITY_HOST="https://login.test"))
    with pytest.raises(ConfigError, match="DPOR_AZURE_CLOUD: expected public, china or usgov"):
        load_settings(DPOR_AZURE_CLOUD="moon")
    with pytest.raises(ConfigError, match="DPOR_AZURE_ARM_URL: expected an https URL"):
        load_settings(DPOR_AZURE_ARM_URL="http://arm.example.test", DPOR_AZURE_AUTHORITY_HOST="https://x")


def test_role_names_and_guids() -> None:
    assert role_guid("contributor") == CONTRIBUTOR
    assert role_guid("User Access Administrator") == BUILTIN_ROLES["User Access Administrator"]
    assert role_guid("{B24988AC-6180-42A0-AB88-20F7382DD24C}") == CONTRIBUTOR
    assert role_guid("Reader") == READER
    assert role_guid("Superuser") is None
    assert guid("ａａａａａａａａ-0000-4000-8000-000000000001") == ALICE  # fullwidth, folded
    assert guid("not-a-guid") is None


async def test_lists_inherited_and_group_rows_over_pages_and_drops_rows_below() -> None:
    fake = FakeArm(page_size=2)
    at_root = fake.add("/", ROOTED, OWNER)
    at_group = fake.add(MANAGEMENT_GROUP, GROUP, OWNER, principal_type="Group")
    at_sub = fake.add(SCOPE, PARTNER, CONTRIBUTOR, principal_type="ServicePrincipal")
    fake.add(f"{SCOPE}/resourceGroups/rg-web", BELOW, OWNER)
    fake.add("/subscriptions/66666666-7777-8888-9999-000000000000", ALICE, OWNER)
    fake.groups[ALICE] = [GROUP]
    client = arm(fake)

    found = await client.assignments(SUB)
    assert {a.id for a in found} == {at_root, at_group, at_sub}
    lists = [s for s in fake.seen if s.method == "GET"]
    assert len(lists) == 2 and lists[1].query["$skiptoken"] == ["2"]  # nextLink followed
    partner = next(a for a in found if a.id == at_sub)
    assert (partner.role_guid, partner.principal_type, partner.scope) == (
        CONTRIBUTOR,
        "ServicePrincipal",
        SCOPE,
    )

    fake.seen.clear()
    alice = await client.assignments(SUB, principal_id=ALICE.upper())
    assert [(a.principal_id, a.role_guid, a.scope) for a in alice] == [(GROUP, OWNER, MANAGEMENT_GROUP)]
    assert fake.seen[0].query["$filter"] == [f"assignedTo('{ALICE}')"]
    assert fake.seen[0].headers["Authorization"] == "Bearer replayed-arm-token"

    with pytest.raises(ProviderError, match="is not an object ID"):
        await client.assignments(SUB, principal_id="x') or true or ('")


async def test_create_201_then_409_returns_the_existing_one() -> None:
    fake = FakeArm()
    credential = FakeCredential()
    client = arm(fake, credential)
    made = await client.create(SUB, PARTNER, CONTRIBUTOR)
    put = fake.seen[-1]
    assert put.method == "PUT" and put.path.startswith(
        f"{SCOPE}/providers/Microsoft.Authorization/roleAssignments/"
    )
    body = json.loads(put.body)["properties"]
    assert body == {
        "roleDefinitionId": f"{SCOPE}/providers/Microsoft.Authorization/roleDefinitions/{CONTRIBUTOR}",
        "principalId": PARTNER,
    }
    assert (made.scope, made.principal_id, made.role_guid) == (SCOPE, PARTNER, CONTRIBUTOR)
    assert made.id in {r["id"] for r in fake.on(SUB)}
    assert credential.scopes[0] == ("https://management.azure.com/.default",)

    again = await client.create(SUB, PARTNER, CONTRIBUTOR)
    assert again == made and len(fake.on(SUB)) == 1
    assert [s.method for s in fake.seen[-2:]] == ["PUT", "GET"]  # 409 RoleAssignmentExists, then found


async def test_delete_200_and_204() -> None:
    fake = FakeArm()
    gone = fake.add(SCOPE, PARTNER, CONTRIBUTOR)
    client = arm(fake)
    await client.delete(gone)
    assert fake.on(SUB) == []
    await client.delete(gone)  # ARM answers 204: nothing to delete
    assert [s.method for s in fake.seen] == ["DELETE", "DELETE"]
    assert fake.seen[0].path == gone


async def test_forbidden_names_the_permission_and_scope(caplog: pytest.LogCaptureFixture) -> None:
    action = "Microsoft.Authorization/roleAssignments/write"
    fake = FakeArm().fail(arm_replay.forbidden(action, SCOPE))
    with caplog.at_level(logging.DEBUG), pytest.raises(ProviderError) as raised:
        await arm(fake).create(SUB, PARTNER, CONTRIBUTOR)
    assert not raised.value.retryable
    assert f"lacks {action} on {SCOPE}" in raised.value.message
    assert "403 AuthorizationFailed" in raised.value.message
    assert "replayed-arm-token" not in caplog.text and "Bearer" not in caplog.text


@pytest.mark.parametrize(
    ("fault", "wait", "said"),
    [
        (arm_replay.throttled(7), 7.0, "HTTP 429 TooManyRequests"),
        (arm_replay.server_error(), None, "HTTP 500 InternalServerError"),
        (HANG, None, "did not answer within 0.2s"),
    ],
)
async def test_throttling_outages_and_timeouts_are_retryable(
    fault: object, wait: float | None, said: str
) -> None:
    fake = FakeArm().fail(fault)
    with pytest.raises(ProviderError) as raised:
        await arm(fake, timeout="0.2").assignments(SUB)
    assert raised.value.retryable and raised.value.retry_after == wait
    assert said in raised.value.message


async def test_principal_not_found_is_not_retried() -> None:
    fake = FakeArm().fail(arm_replay.principal_not_found(PARTNER))
    with pytest.raises(ProviderError, match="does not know the principal") as raised:
        await arm(fake).create(SUB, PARTNER, CONTRIBUTOR)
    assert not raised.value.retryable


async def test_sovereign_cloud_is_where_calls_go() -> None:
    fake = FakeArm(arm_url="https://management.chinacloudapi.cn")
    fake.add(SCOPE, PARTNER, CONTRIBUTOR)
    credential = FakeCredential()
    found = await arm(fake, credential, DPOR_AZURE_CLOUD="china").assignments(SUB)
    assert [a.principal_id for a in found] == [PARTNER]
    assert credential.scopes == [("https://management.chinacloudapi.cn/.default",)]
