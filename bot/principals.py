"""A partner's PAL-linked principals (the partner directory's `--principal`) and the role assignments the
azure-rbac provider made for them. No Azure SDK here: the CLI works without the `azure` extra."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot import audit
from bot.errors import BadInput
from storage import directory as store
from storage import principals as sql
from storage.db import Database
from storage.models import ManagedAssignment, utcnow

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OBJECT_ID_HELP = (
    "give the principal's object ID, a GUID such as 3c1f0c6e-9b1d-4c56-8a7e-5e9d2a4f7b10 (Microsoft Entra "
    "admin center: the user's or the enterprise application's Object ID)"
)


# Azure's built-in roles (bot/providers/arm.py has the same map; this module needs no Azure SDK).
_BUILTIN = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "acdd72a7-3385-48ef-bd42-f606fba81ae7": "Reader",
}


def role_label(setting: str) -> str:
    """DPOR_AZURE_RBAC_ROLE as people read it: a built-in role's name, else `custom role <GUID>`."""
    folded = " ".join(unicodedata.normalize("NFKC", setting).split()).lower()
    for guid, name in _BUILTIN.items():
        if folded in (guid, name.lower(), name.lower().replace(" ", "")):
            return name
    return f"custom role {folded.strip('{}')}"


def object_id(text: str) -> str:
    """An Entra object ID in lower-case ASCII (folded with NFKC), else BadInput saying what to give."""
    folded = unicodedata.normalize("NFKC", text).strip().strip("{}").lower()
    if not _GUID.fullmatch(folded):
        shown = text.strip()[:60].replace("`", "'")
        raise BadInput(f"`{shown}` is not an object ID: {OBJECT_ID_HELP}.")
    return folded


async def add_principals(
    db: Database, partner_id: str, object_ids: Iterable[str], *, actor: str
) -> list[str]:
    """Link principals to a partner in the directory (each audited); returns those newly linked."""
    wanted = list(dict.fromkeys(object_id(o) for o in object_ids))  # every one checked before any write
    added: list[str] = []
    async with db.write() as session:
        if await store.partner_by_id(session, partner_id) is None:
            raise BadInput(f"partner {partner_id} is not in the directory: add it with --name first.")
        for oid in wanted:
            if await sql.add_principal(session, partner_id, oid, actor):
                added.append(oid)
                await audit.append(
                    session,
                    audit.Entry(
                        actor=actor,
                        action="partner.principal_added",
                        data={"partner_id": partner_id, "object_id": oid},
                    ),
                )
    return added


async def all_principals(db: Database) -> dict[str, list[str]]:
    async with db.read() as session:
        return await sql.all_principals(session)


@dataclass(frozen=True)
class Footing:
    """What applying a partner to a subscription starts from, read in one go."""

    principals: list[str]  # the new partner's
    owner_of: dict[str, str]  # every known principal -> its partner
    managed: list[ManagedAssignment]  # what dpor-bot made on the subscription and has not removed
    names: dict[str, str]  # partner names


async def footing(db: Database, subscription_id: str, partner_id: str | None) -> Footing:
    async with db.read() as session:
        every = await sql.all_principals(session)
        managed = await sql.managed_on(session, subscription_id)
        names = {p.partner_id: p.name for p in await store.all_partners(session)}
    owner_of = {oid: pid for pid, oids in every.items() for oid in oids}
    return Footing(every.get(partner_id or "", []), owner_of, managed, names)


async def record(
    db: Database,
    subscription_id: str,
    partner_id: str,
    made: Sequence[tuple[str, str, str]],
    removed: Sequence[str],
) -> None:
    """Record the assignments made (assignment ID, principal, role definition ID) and those removed."""
    async with db.write(serial=False) as session:
        await sql.record_managed(
            session,
            [
                ManagedAssignment(
                    assignment_id=aid,
                    subscription_id=subscription_id,
                    partner_id=partner_id,
                    principal_id=principal,
                    role_definition_id=role,
                )
                for aid, principal, role in made
            ],
        )
        await sql.mark_removed(session, removed, utcnow())
