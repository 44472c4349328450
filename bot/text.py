"""Cleaning of free text people type (reasons, names, aliases) before it is stored or echoed."""

from __future__ import annotations

import re
import unicodedata

# Characters that show nothing yet change what a text says or how it compares: bidirectional overrides,
# isolates and marks (a reason can read differently from what it says), zero-width spaces and joiners,
# the word joiner and invisible operators, the byte-order mark, the line and paragraph separators, and
# the tag characters (they can smuggle a hidden text, e.g. to a language model reading the audit log).
INVISIBLE = re.compile(
    "[\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
)


def clean(text: str) -> str:
    """Drop control characters (keeping newlines and tabs) and invisible ones; PostgreSQL refuses NUL."""
    text = INVISIBLE.sub("", text)
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")


def has_invisible(text: str) -> bool:
    """Whether the text holds a character that shows nothing: a control or format character, or one above."""
    return INVISIBLE.search(text) is not None or any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text
    )


# What a command line becomes when its bytes are not UTF-8 (`Café` typed in a Latin-1 terminal): Python
# keeps each such byte as a lone surrogate, which no database and no URL can encode.
NOT_UTF8 = "holds bytes that are not UTF-8 text: set the terminal (or the script) to UTF-8 and type it again"


def undecodable(text: str) -> bool:
    """Whether the text holds a lone surrogate: a byte of a command line that was not UTF-8."""
    return any("\ud800" <= c <= "\udfff" for c in text)
