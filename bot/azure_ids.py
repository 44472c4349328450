"""Azure's identifiers that need no SDK: GUIDs and the built-in roles' role definition GUIDs.

Shared by the ARM layer (`bot.providers.arm`, the azure extra) and by what must work without the extra:
the settings' checks of DPOR_AZURE_*_ROLES and the Azure role source's mapping.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Azure's built-in roles, by the GUID of their role definition (the same in every tenant and cloud).
BUILTIN_ROLES = {
    "Owner": "8e3af657-a8ff-443c-a75c-2fe8c4bcb635",
    "Contributor": "b24988ac-6180-42a0-ab88-20f7382dd24c",
    "User Access Administrator": "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9",
    "Role Based Access Control Administrator": "f58310d9-a9f6-439a-9e8d-f62e7b41a168",
    "Reader": "acdd72a7-3385-48ef-bd42-f606fba81ae7",
}
ROLE_NAMES = {guid: name for name, guid in BUILTIN_ROLES.items()}
_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def guid(text: str) -> str | None:
    """`text` as a lower-case GUID (folded with NFKC, braces dropped), or None when it is not one."""
    folded = unicodedata.normalize("NFKC", text).strip().strip("{}").lower()
    return folded if _GUID.fullmatch(folded) else None


def role_guid(name_or_guid: str) -> str | None:
    """A built-in role's GUID by its name (any case), or the GUID given; None when it is neither."""
    folded = " ".join(unicodedata.normalize("NFKC", name_or_guid).split()).lower()
    for name, value in BUILTIN_ROLES.items():
        if folded in (name.lower(), name.lower().replace(" ", "")):
            return value
    return guid(name_or_guid)


def role_name(role_definition_guid: str) -> str:
    """The built-in role's name, else the GUID (a custom role)."""
    return ROLE_NAMES.get(role_definition_guid.lower(), role_definition_guid.lower())


def role_guids(names: Iterable[str]) -> frozenset[str]:
    """Role names (built-ins, any case) or role definition GUIDs as GUIDs; ValueError names a bad one."""
    guids = set()
    for name in names:
        if not name.strip():
            continue
        found = role_guid(name)
        if found is None:
            known = ", ".join(BUILTIN_ROLES)
            raise ValueError(
                f"expected built-in role names ({known}) or role definition GUIDs, comma-separated; "
                f"{name.strip()!r} is neither"
            )
        guids.add(found)
    return frozenset(guids)
