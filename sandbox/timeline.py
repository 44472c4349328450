"""A channel as one person sees it on the page: everyone's messages, oldest first, each thread's replies
under its parent (shown as "N replies"), and what only that person sees (ephemerals, the commands they
typed with the bot's answers, problems between the sandbox's Slack and the bot).

What only one person sees lives for the page session, as in Slack: an ephemeral is gone after a reload.
The page passes `since` (the time its session started, as the server told it) and gets only the
ephemerals and typed commands made since then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox import render
from sandbox.standin import SlackStandin

JSONDict = dict[str, Any]


@dataclass
class Local:
    """What only one person sees without the bot having posted it: a slash command they typed with
    the answer that came back in the ack, or a problem between the sandbox's Slack and the bot."""

    channel: str
    user: str
    ts: str
    command: str | None
    text: str = ""
    blocks: list[JSONDict] = field(default_factory=list)
    problem: str | None = None
    answered: bool = False


def timeline(
    slack: SlackStandin,
    locals_: list[Local],
    names: render.Names,
    channel: str,
    user_id: str,
    since: float = 0.0,
) -> list[JSONDict]:
    """The channel as `user_id` sees it, oldest first; replies sit in their parent's `replies`."""
    items: list[tuple[float, JSONDict]] = []
    parents: dict[str, JSONDict] = {}
    replies: list[tuple[float, str, JSONDict]] = []
    for m in slack.messages(channel):
        body = render.blocks(m.blocks, m.text, names, render.Origin(channel, m.ts))
        item = _item(f"m{m.ts}", "message", m.ts, body, names, edited=m.updated > 0)
        item["replies"] = []
        if m.thread_ts and m.thread_ts != m.ts:
            replies.append((float(m.ts), m.thread_ts, item))
        else:
            parents[m.ts] = item
            items.append((float(m.ts), item))
    for e in slack.ephemerals(user_id):
        if e.channel == channel and float(e.message_ts) >= since:
            item = _item(
                f"e{e.message_ts}", "ephemeral", e.message_ts, render.blocks(e.blocks, e.text, names), names
            )
            if e.thread_ts:
                replies.append((float(e.message_ts), e.thread_ts, item))
            else:
                items.append((float(e.message_ts), item))
    for ts, thread_ts, item in sorted(replies, key=lambda r: r[0]):
        parent = parents.get(thread_ts)
        if parent is not None:
            parent["replies"].append(item)
        else:
            item["thread"] = True  # its parent is not in this channel: shown in place, marked
            items.append((ts, item))
    for entry in locals_:
        if entry.user == user_id and entry.channel == channel and float(entry.ts) >= since:
            items.append((float(entry.ts), local_item(entry, names)))
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


def local_item(entry: Local, names: render.Names) -> JSONDict:
    body: list[render.Node] = []
    if entry.problem:
        body.append({"el": "div", "class": "blk problem", "kids": [entry.problem]})
    if entry.text or entry.blocks:
        body += render.blocks(entry.blocks, entry.text, names)
    item = _item(f"l{entry.ts}", "command" if entry.command else "problem", entry.ts, body, names)
    item["command"], item["pending"] = entry.command, not entry.answered
    return item


def _item(
    key: str, kind: str, ts: str, body: list[render.Node], names: render.Names, *, edited: bool = False
) -> JSONDict:
    at = datetime.fromtimestamp(float(ts), names.tz)
    return {
        "key": key,
        "kind": kind,
        "ts": ts,
        "time": f"{at:%H:%M}",
        "epoch": float(ts),
        "edited": edited,
        "thread": False,
        "body": body,
    }
