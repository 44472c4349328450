"""Slack's inline tokens the sandbox draws itself: `:emoji:` shortcodes and `<!date^...>` dates.

Emoji: the page must read right on a machine without a colour-emoji font (Debian's chromium in CI has
DejaVu and Liberation only), so each shortcode the bot uses becomes a monochrome symbol DejaVu Sans has,
or, where DejaVu has none, an empty span the stylesheet draws with a small SVG mask (class `emoji-svg`).
Never a colour emoji code point. A shortcode the sandbox does not know stays as written, as Slack shows
an unknown one.

Dates: the server writes each date in its own time zone (a fallback, and what the tests read), and puts
the epoch and the format on the node so the page writes it again in the browser's time zone, as each
Slack client does for its reader.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import Any

Node = str | dict[str, Any]

# shortcode -> the DejaVu Sans symbol drawn for it ("" = drawn by the stylesheet as an SVG mask)
EMOJI = {
    "alarm_clock": "",
    "bell": "",
    "no_bell": "",
    "hourglass": "",
    "hourglass_flowing_sand": "",
    "lock": "",
    "no_entry": "",
    "key": "",
    "speech_balloon": "",
    "rotating_light": "",
    "no_entry_sign": "\u2298",  # ⊘ (red)
    "repeat": "\u27f2",  # ⟲
    "arrows_counterclockwise": "\u27f2",  # ⟲
    "boom": "\u2739",  # ✹
    "gear": "\u2699",  # ⚙
    "heavy_check_mark": "\u2714",  # ✔
    "white_check_mark": "\u2714",  # ✔ (green)
    "heavy_multiplication_x": "\u2716",  # ✖
    "x": "\u2718",  # ✘ (red)
    "warning": "\u26a0",  # ⚠
    "memory": "\u270e",  # ✎
    "information_source": "\u2139",  # ℹ
    "inbox_tray": "\u21e9",  # ⇩
    "email": "\u2709",  # ✉
    "zap": "\u26a1",  # ⚡
}
SVG_EMOJI = frozenset(name for name, symbol in EMOJI.items() if not symbol)

_EMOJI = re.compile(r":([a-z0-9_+-]+):")
_DATE_TOKEN = re.compile(r"\{(\w+)\}")
DATE_FORMATS = ("date_num", "date", "date_short", "date_long", "time", "time_secs", "ago")


def emoji(name: str) -> Node:
    """One shortcode's node: a symbol with the shortcode as its title, or the shortcode as written."""
    if name not in EMOJI:
        return f":{name}:"
    cls = f"emoji emoji-{name.replace('_', '-')}" + (" emoji-svg" if name in SVG_EMOJI else "")
    return {"el": "span", "class": cls, "title": f":{name}:", "kids": [EMOJI[name]] if EMOJI[name] else []}


def emoji_nodes(text: str) -> list[Node]:
    """Text with its known shortcodes as emoji nodes."""
    nodes: list[Node] = []
    last = 0
    for match in _EMOJI.finditer(text):
        if match.group(1) not in EMOJI:
            continue
        if match.start() > last:
            nodes.append(text[last : match.start()])
        nodes.append(emoji(match.group(1)))
        last = match.end()
    if last < len(text):
        nodes.append(text[last:])
    return nodes


def emoji_text(text: str) -> str:
    """Known shortcodes as their symbols, for places that take plain text only (a dialog's title)."""
    return _EMOJI.sub(lambda m: EMOJI.get(m.group(1)) or m.group(0), text)


def date(spec: str, fallback: str, tz: tzinfo, now: Callable[[], datetime]) -> Node:
    """`<!date^UNIX^FORMAT[^LINK]|fallback>`, written in `tz`; a bad one shows its fallback.

    The node carries `epoch` and `format` (the template) so the page writes it again in the browser's zone.
    """
    parts = spec.split("^")
    try:
        epoch = int(parts[0])
        at = datetime.fromtimestamp(epoch, tz)
        template = parts[1]
    except (ValueError, IndexError, OverflowError, OSError):
        return fallback
    today = now().astimezone(tz).date()

    def token(match: re.Match[str]) -> str:
        return date_token(match.group(1), at, today, now()) or match.group(0)

    return {
        "el": "time",
        "class": "date",
        "title": fallback,
        "epoch": epoch,
        "format": template,
        "kids": [_DATE_TOKEN.sub(token, template)],
    }


def date_token(name: str, at: datetime, today: Any, now: datetime) -> str | None:
    """One `{token}` of a date's format, as Slack writes it in English."""
    day = at.day
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    formats = {
        "date_num": f"{at:%Y-%m-%d}",
        "date": f"{at:%B} {day}{suffix}, {at:%Y}",
        "date_short": f"{at:%b} {day}, {at:%Y}",
        "date_long": f"{at:%A}, {at:%B} {day}{suffix}, {at:%Y}",
        "time": f"{at:%H:%M}",
        "time_secs": f"{at:%H:%M:%S}",
    }
    if name in formats:
        return formats[name]
    if name.endswith("_pretty") and name.removesuffix("_pretty") in formats:
        relative = {
            today: "today",
            today - timedelta(days=1): "yesterday",
            today + timedelta(days=1): "tomorrow",
        }
        return relative.get(at.date()) or formats[name.removesuffix("_pretty")]
    if name == "ago":
        return ago(now - at)
    return None


def ago(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"
