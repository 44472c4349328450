"""Cleaning of free text people type (reasons, names, aliases) before it is stored or echoed."""

from __future__ import annotations

import re
import unicodedata

# Bidirectional overrides and isolates can make a reason read differently from what it says.
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Drop control characters (keeping newlines and tabs) and bidi overrides; PostgreSQL refuses NUL."""
    text = _BIDI.sub("", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
