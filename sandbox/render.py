"""Block Kit and Slack mrkdwn turned into a small element tree that the sandbox page makes into DOM nodes.

Rendering happens here rather than in the page so the parsing (the part that can go wrong) is tested in
milliseconds without a browser, and the page stays a dumb builder: it creates only elements from a fixed
list and puts every string in with textContent, so text from a message can never become markup.

A node is a string (text) or a dict: `el` (tag), optional `class`, `title`, `kids` (nodes), and on
buttons `action` (what a click sends) and `confirm` (the confirm dialog).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from sandbox import tokens

Node = str | dict[str, Any]
JSONDict = dict[str, Any]

_SPECIAL = re.compile(r"<([^<>\n]*)>")  # Slack escapes a literal < as &lt;, so a raw < opens a special
_CODE = re.compile(r"```([\s\S]+?)```|`([^`\n]+)`")
_PRIVATE_USE = re.compile("[\ue000-\uf8ff]")
_PLACEHOLDER = re.compile("([\ue000-\uf8ff])")
_PLACEHOLDER_BASE = 0xE000
_STYLES = {"*": "b", "_": "i", "~": "s"}
# A style mark opens and closes at a word's edge, hugging non-space text: *bold* but not 2*3*4 or a_b_c.
_STYLE = {
    mark: re.compile(rf"(?<![\w{m}]){m}(?=\S)([^\n]+?)(?<=\S){m}(?![\w{m}])")
    for mark, m in ((mark, re.escape(mark)) for mark in _STYLES)
}


@dataclass(frozen=True)
class Names:
    """What the reader's Slack client knows: people's and channels' names, the reader's time zone."""

    users: Mapping[str, str] = field(default_factory=dict)
    channels: Mapping[str, str] = field(default_factory=dict)
    tz: tzinfo = UTC
    now: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(frozen=True)
class Origin:
    """Where a block is: a posted message (channel, ts) or a view (`view`, its id: App Home, a modal).
    Buttons with no origin (an ephemeral's) are inert."""

    channel: str = ""
    ts: str = ""
    view: str | None = None


def decode(text: str) -> str:
    """Undo Slack's escaping of its three control characters (and only those, as Slack does)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# mrkdwn


def mrkdwn(text: str, names: Names) -> list[Node]:
    """Slack's mrkdwn: *bold*, _italic_, ~strike~, `code`, ```pre```, <links>, <@mentions>, <#channels>,
    <!date^...>, <!here>, :emoji: and the &amp; &lt; &gt; escapes."""
    specials: list[str] = []

    def hold(match: re.Match[str]) -> str:
        specials.append(match.group(1))
        return chr(_PLACEHOLDER_BASE + len(specials) - 1)

    held = _SPECIAL.sub(hold, _PRIVATE_USE.sub("\ufffd", text))
    nodes: list[Node] = []
    last = 0
    for match in _CODE.finditer(held):
        nodes += _styled(held[last : match.start()], specials, names)
        if match.group(1) is not None:
            nodes.append(_el("pre", _plain(match.group(1).strip("\n"), specials), "pre"))
        else:
            nodes.append(_el("code", _plain(match.group(2), specials), "code"))
        last = match.end()
    nodes += _styled(held[last:], specials, names)
    return _merge(nodes)


def _styled(text: str, specials: list[str], names: Names) -> list[Node]:
    """Bold, italic and strike (nested as Slack allows), then the leaves."""
    if not text:
        return []
    first: tuple[int, re.Match[str], str] | None = None
    for mark, pattern in _STYLE.items():
        found = pattern.search(text)
        if found and (first is None or found.start() < first[0]):
            first = (found.start(), found, mark)
    if first is None:
        return _leaf(text, specials, names)
    _, found, mark = first
    inner = _styled(found.group(1), specials, names)
    return [
        *_leaf(text[: found.start()], specials, names),
        {"el": _STYLES[mark], "kids": _merge(inner)},
        *_styled(text[found.end() :], specials, names),
    ]


def _leaf(text: str, specials: list[str], names: Names) -> list[Node]:
    nodes: list[Node] = []
    for i, part in enumerate(_PLACEHOLDER.split(text)):
        if i % 2:
            nodes.append(_special(specials[ord(part) - _PLACEHOLDER_BASE], names))
        elif part:
            nodes += tokens.emoji_nodes(decode(part))
    return nodes


def _plain(text: str, specials: list[str]) -> list[Node]:
    """Code keeps its characters: specials inside it come back as they were written."""
    restored = _PLACEHOLDER.sub(lambda m: f"<{specials[ord(m.group(1)) - _PLACEHOLDER_BASE]}>", text)
    return [decode(restored)]


def _special(body: str, names: Names) -> Node:
    target, _, label = body.partition("|")
    label = decode(label)
    if target.startswith("@") and len(target) > 1:
        return _el("span", ["@" + (names.users.get(target[1:]) or label or target[1:])], "mention")
    if target.startswith("#") and len(target) > 1:
        return _el("span", ["#" + (names.channels.get(target[1:]) or label or target[1:])], "mention")
    if target.startswith("!"):
        return _command(target[1:], label, names)
    if re.match(r"^(https?|mailto|tel):", target):
        return _el("span", [label or decode(target)], "link", title=decode(target))
    return decode(f"<{body}>")


def _command(command: str, label: str, names: Names) -> Node:
    name, _, rest = command.partition("^")
    if name in ("here", "channel", "everyone"):
        return _el("span", [f"@{name}"], "mention")
    if name == "subteam":
        return _el("span", [label or "@group"], "mention")
    if name == "date":
        return _date(rest, label, names)
    return label or decode(f"<!{command}>")


def _date(spec: str, fallback: str, names: Names) -> Node:
    return tokens.date(decode(spec), fallback, names.tz, names.now)


# Block Kit


def blocks(
    message_blocks: list[JSONDict], text: str, names: Names, origin: Origin | None = None
) -> list[Node]:
    """A message's blocks; a message without blocks shows its text, as Slack does."""
    if not message_blocks:
        return [_el("div", mrkdwn(text, names), "blk blk-section")]
    return [block(b, names, origin) for b in message_blocks]


def block(b: JSONDict, names: Names, origin: Origin | None = None) -> Node:
    kind = b.get("type")
    if kind == "header":
        return _el("div", text_object(b.get("text"), names), "blk blk-header")
    if kind == "divider":
        return _el("hr", [], "blk blk-divider")
    if kind == "section":
        kids: list[Node] = []
        if b.get("text"):
            kids.append(_el("div", text_object(b["text"], names), "section-text"))
        if b.get("fields"):
            fields = [_el("div", text_object(f, names), "field") for f in b["fields"]]
            kids.append(_el("div", fields, "fields"))
        if b.get("accessory"):
            kids.append(_el("div", [element(b["accessory"], b, names, origin)], "accessory"))
        return _el("div", kids, "blk blk-section")
    if kind == "context":
        return _el("div", [element(e, b, names, origin) for e in b.get("elements", [])], "blk blk-context")
    if kind == "actions":
        return _el("div", [element(e, b, names, origin) for e in b.get("elements", [])], "blk blk-actions")
    if kind == "image":
        return _el("div", [_image(b)], "blk blk-image")
    return _el("div", [f"(a {kind} block, which the sandbox does not draw)"], "blk blk-unsupported")


def element(e: JSONDict, parent: JSONDict, names: Names, origin: Origin | None) -> Node:
    kind = e.get("type")
    if kind in ("mrkdwn", "plain_text"):
        return _el("span", text_object(e, names), "ctx-text")
    if kind == "image":
        return _image(e)
    if kind == "button":
        return button(e, parent, names, origin)
    return _el("span", [f"(a {kind} element, which the sandbox does not draw)"], "unsupported")


def button(e: JSONDict, parent: JSONDict, names: Names, origin: Origin | None) -> Node:
    style = e.get("style")
    node: JSONDict = _el(
        "button", text_object(e.get("text"), names), f"btn{f' btn-{style}' if style else ''}"
    )
    if e.get("url"):
        node["title"] = str(e["url"])
    if origin is not None and e.get("action_id"):
        where = {"view": origin.view} if origin.view else {"channel": origin.channel, "ts": origin.ts}
        node["action"] = {
            **where,
            "action_id": str(e["action_id"]),
            "block_id": str(parent.get("block_id") or ""),
        }
    if isinstance(e.get("confirm"), dict):
        node["confirm"] = confirm(e["confirm"], names)
    return node


def confirm(c: JSONDict, names: Names) -> JSONDict:
    """A button's confirm dialog: the page shows it before sending the click."""
    return {
        "title": _plain_text(c.get("title"), "Are you sure?"),
        "text": text_object(c.get("text"), names),
        "confirm": _plain_text(c.get("confirm"), "Yes"),
        "deny": _plain_text(c.get("deny"), "Cancel"),
        "style": c.get("style") or "primary",
    }


def text_object(obj: Any, names: Names) -> list[Node]:
    if not isinstance(obj, dict):
        return [str(obj)] if obj else []
    text = str(obj.get("text") or "")
    if obj.get("type") == "mrkdwn":
        return mrkdwn(text, names)
    return tokens.emoji_nodes(text) if obj.get("emoji", True) else [text]


def _plain_text(obj: Any, default: str) -> str:
    if isinstance(obj, dict):
        return tokens.emoji_text(str(obj.get("text") or default))
    return str(obj) if obj else default


def _image(e: JSONDict) -> Node:
    alt = str(e.get("alt_text") or "image")
    return _el("span", [f"[image: {alt}]"], "image", title=str(e.get("image_url") or ""))


def _el(tag: str, kids: list[Node], cls: str | None = None, *, title: str | None = None) -> JSONDict:
    node: JSONDict = {"el": tag, "kids": kids}
    if cls:
        node["class"] = cls
    if title:
        node["title"] = title
    return node


def _merge(nodes: list[Node]) -> list[Node]:
    """Join neighbouring strings: fewer DOM nodes, simpler assertions."""
    out: list[Node] = []
    for node in nodes:
        if isinstance(node, str) and out and isinstance(out[-1], str):
            out[-1] += node
        elif node != "":
            out.append(node)
    return out
