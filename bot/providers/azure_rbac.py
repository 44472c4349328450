"""The azure-rbac provider: a partner credited the way Microsoft credits it, through role assignments.

Microsoft credits a partner (Partner Admin Link) for the resources on which the principals it linked its
Partner ID to hold an eligible role. So making P the partner of S gives each of P's principals (the
directory's `--principal`) the configured role (DPOR_AZURE_RBAC_ROLE, default Contributor) on
`/subscriptions/S`, removes the assignments dpor-bot made there for the previous partner, reports any other
partner's assignment it did not make, and reads the assignments back.

Which partner a subscription credits (`current`): the partners whose principals hold Owner, Contributor or
the configured role at the subscription or above it. Several is a policy breach the bot reports: the
PartnerState has no single partner_id then, and `credited` lists them all.
"""

from __future__ import annotations

import logging
from typing import Any

from bot import principals
from bot.azure_ids import BUILTIN_ROLES, role_guid, role_name
from bot.providers import PartnerState, ProviderError
from bot.providers.arm import Arm, Assignment, subscription_scope
from bot.settings import ConfigError, Settings
from storage.db import Database

log = logging.getLogger("dpor.providers.azure_rbac")

ELIGIBLE = frozenset({BUILTIN_ROLES["Owner"], BUILTIN_ROLES["Contributor"]})


def configured_role(settings: Settings) -> str:
    """DPOR_AZURE_RBAC_ROLE as a role definition GUID; Reader (no PAL credit) and unknown names refused."""
    given = settings.azure_rbac_role
    role = role_guid(given)
    if role is None:
        raise ConfigError(
            f"DPOR_AZURE_RBAC_ROLE: expected Contributor, Owner or a role definition GUID (got {given!r})"
        )
    if role == BUILTIN_ROLES["Reader"]:
        raise ConfigError(
            "DPOR_AZURE_RBAC_ROLE: Reader earns a partner no Partner Admin Link credit; use Contributor, "
            "Owner or a custom role that can write"
        )
    return role


def _shown(a: Assignment) -> dict[str, Any]:
    return {"assignment_id": a.id, "principal_id": a.principal_id, "role": role_name(a.role_guid)}


class AzureRbacProvider:
    name = "azure-rbac"

    def __init__(self, settings: Settings, db: Database, *, arm: Arm | None = None) -> None:
        self.db = db
        self.role = configured_role(settings)
        self.role_name = role_name(self.role)
        self.eligible = ELIGIBLE | {self.role}
        self.arm = arm or Arm(settings)

    async def apply(self, subscription_id: str, partner_id: str) -> PartnerState:
        base = await principals.footing(self.db, subscription_id, partner_id)
        name = base.names.get(partner_id)
        if not base.principals:
            raise ProviderError(
                f"partner {partner_id} ({name or 'not in the directory'}) has no principal to credit: add "
                f"the object ID it linked with Partner Admin Link: dpor-bot partners add {partner_id} "
                f'--name "{name or "NAME"}" --principal OBJECT_ID'
            )
        made = [await self.arm.create(subscription_id, p, self.role) for p in base.principals]
        # Recorded before anything is removed: a crash now leaves nothing dpor-bot made unrecorded.
        await principals.record(
            self.db,
            subscription_id,
            partner_id,
            [(a.id, a.principal_id, a.role_definition_id) for a in made],
            [],
        )
        stale = [m for m in base.managed if m.partner_id != partner_id]
        for old in stale:
            await self.arm.delete(old.assignment_id)
        await principals.record(self.db, subscription_id, partner_id, [], [m.assignment_id for m in stale])

        after = await self.arm.assignments(subscription_id)
        live = {a.id.lower() for a in after}
        missing = [a.id for a in made if a.id.lower() not in live]
        if missing:
            raise ProviderError(
                f"Azure does not list the role assignment dpor-bot just made ({missing[0]}) yet",
                retryable=True,
            )
        ours = {a.id.lower() for a in made}
        others = [
            {**_shown(a), "partner_id": base.owner_of[a.principal_id], "scope": a.scope}
            for a in after
            if a.id.lower() not in ours
            and a.role_guid in self.eligible
            and base.owner_of.get(a.principal_id) not in (None, partner_id)
        ]
        log.info(
            "azure-rbac: partner %s credited on subscription %s through %s assignment(s) of %s; %s removed%s",
            partner_id,
            subscription_id,
            len(made),
            self.role_name,
            len(stale),
            f"; {len(others)} other partner assignment(s) found" if others else "",
        )
        assignments = [_shown(a) for a in made]
        detail: dict[str, Any] = {
            "assignments": assignments,
            "removed": [
                {"assignment_id": m.assignment_id, "partner_id": m.partner_id, "principal_id": m.principal_id}
                for m in stale
            ],
        }
        if others:
            detail["other_partners"] = others
        return PartnerState(
            partner_id,
            name,
            {
                "scope": subscription_scope(subscription_id),
                "role": self.role_name,
                "assignments": assignments,
            },
            detail,
        )

    async def current(self, subscription_id: str) -> PartnerState:
        base = await principals.footing(self.db, subscription_id, None)
        found = await self.arm.assignments(subscription_id)
        credit: dict[str, list[Assignment]] = {}
        for a in found:
            partner = base.owner_of.get(a.principal_id)
            if partner is not None and a.role_guid in self.eligible:
                credit.setdefault(partner, []).append(a)
        identity = {
            "scope": subscription_scope(subscription_id),
            "assignments": [
                {**_shown(a), "partner_id": p} for p, rows in sorted(credit.items()) for a in rows
            ],
        }
        credited = tuple(sorted(credit))
        if len(credited) == 1:
            only = credited[0]
            return PartnerState(only, base.names.get(only), identity, credited=credited)
        return PartnerState(None, None, identity, credited=credited)
