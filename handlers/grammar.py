"""The `/dpor` slash-command grammar: text in, a parsed command or a usage error out."""

from __future__ import annotations

import re
from dataclasses import dataclass

USAGE = {
    "set": (
        "/dpor set  (opens a form)  or  /dpor set SUBSCRIPTION PARTNER_ID [reason...]",
        "/dpor set prod-eu 4977985 Contoso now runs our support",
    ),
    "show": ("/dpor show SUBSCRIPTION", "/dpor show prod-eu"),
    "list": ("/dpor list [PAGE]", "/dpor list 2"),
    "history": ("/dpor history SUBSCRIPTION [PAGE]", "/dpor history prod-eu"),
    "pending": ("/dpor pending [PAGE]", "/dpor pending"),
    "cancel": ("/dpor cancel REQUEST_ID", "/dpor cancel 42"),
    "role": (
        "/dpor role grant|revoke @user owner|admin [SUBSCRIPTION]  or  /dpor role list [SUBSCRIPTION]",
        "/dpor role grant @alex owner prod-eu",
    ),
    "subscribe": ("/dpor subscribe SUBSCRIPTION|all", "/dpor subscribe all"),
    "unsubscribe": ("/dpor unsubscribe [SUBSCRIPTION|all]", "/dpor unsubscribe prod-eu"),
    "help": ("/dpor help", "/dpor help"),
}
# A user ID: U or W and up to 31 more (what the database keeps: 32 characters; Slack's are 9 to 11).
SLACK_USER = re.compile(r"^(?:<@([UW][A-Z0-9]{2,31})(?:\|[^>]*)?>|([UW][A-Z0-9]{2,31}))$")
# Slack's markup in the text it sends: <@U1|name>, <#C1|name>, <!here>, <!subteam^S1|@team>, <http://x|y>.
_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")


def plain(text: str) -> str:
    """What the person typed, from the text Slack sends: markup as readable text, entities decoded.

    Slack encodes a typed `&`, `<` and `>` as entities and turns mentions into markup. The bot keeps
    plain text and escapes it again whenever it echoes it, so nothing it stored can ping or link.
    """

    def readable(match: re.Match[str]) -> str:
        sigil, target, label = match.groups()
        if sigil in ("@", "#"):
            return f"{sigil}{(label or target).lstrip('@#')}"
        if sigil == "!":
            return label or f"@{target.split('^')[0]}"
        return f"{label} ({target})" if label and label != target else target

    text = _MARKUP.sub(readable, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


class UsageError(Exception):
    def __init__(self, problem: str, subcommand: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.subcommand = subcommand


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()
    rest: str = ""  # free text after the fixed arguments (the reason of `set`)
    page: int = 1


def slack_user(text: str) -> str | None:
    """`U123`, `<@U123>` or `<@U123|name>` as the user ID `U123`; None when it is not a user."""
    match = SLACK_USER.match(text.strip())
    return (match.group(1) or match.group(2)) if match else None


def parse_user(token: str) -> str:
    user = slack_user(token)
    if user is None:
        raise UsageError(f"`{token}` is not a Slack user: mention them, like @alex.", "role")
    return user


_PAGE = re.compile(r"[0-9]{1,6}")


def _page(tokens: list[str], name: str) -> int:
    if not tokens:
        return 1
    # ASCII digits only: `isdigit()` also takes ², ① and the like, which int() refuses; and a short run,
    # so int() never reads an absurdly long one.
    if len(tokens) == 1 and _PAGE.fullmatch(tokens[0]) and 1 <= int(tokens[0]) <= 100_000:
        return int(tokens[0])
    raise UsageError(f"`{' '.join(tokens)}` is not a page number.", name)


def parse(text: str) -> Command:
    text = (text or "").strip()
    if not text:
        return Command("help")
    head, _, tail = text.partition(" ")
    name = plain(head).lower()
    tokens = [plain(t) for t in tail.split()]
    if name in ("help", "-h", "--help", "?"):
        return Command("help")
    if name == "set":
        parts = tail.strip().split(None, 2)
        if not parts:
            return Command("set")  # the form
        if len(parts) < 2:
            raise UsageError("`set` needs a subscription and a partner ID.", "set")
        reason = plain(parts[2]).strip() if len(parts) > 2 else ""
        return Command("set", (plain(parts[0]), plain(parts[1])), rest=reason)
    if name in ("show", "cancel"):
        if len(tokens) != 1:
            what = "a subscription ID or alias" if name == "show" else "a request number"
            raise UsageError(f"`{name}` takes one argument: {what}.", name)
        return Command(name, (tokens[0],))
    if name in ("list", "pending"):
        return Command(name, page=_page(tokens, name))
    if name == "history":
        if not tokens:
            raise UsageError("`history` needs a subscription ID or alias.", name)
        return Command(name, (tokens[0],), page=_page(tokens[1:], name))
    if name == "subscribe":
        if len(tokens) != 1:
            raise UsageError("`subscribe` takes a subscription ID or alias, or `all`.", name)
        return Command(name, (tokens[0],))
    if name == "unsubscribe":
        if len(tokens) > 1:
            raise UsageError("`unsubscribe` takes at most a subscription ID or alias, or `all`.", name)
        return Command(name, tuple(tokens))
    if name == "role":
        return _parse_role(tail.split())
    raise UsageError(f"`{plain(head)}` is not a /dpor command.")


def _parse_role(raw: list[str]) -> Command:
    """Users are read from Slack's mention markup; every other argument from its plain text."""
    tokens = [plain(t) for t in raw]
    if not tokens:
        raise UsageError("`role` needs `grant`, `revoke` or `list`.", "role")
    verb = tokens[0].lower()
    if verb == "list":
        if len(tokens) > 2:
            raise UsageError("`role list` takes at most a subscription.", "role")
        return Command("role list", tuple(tokens[1:2]))
    if verb in ("grant", "revoke"):
        if len(tokens) not in (3, 4):
            raise UsageError(f"`role {verb}` needs a user and a role (owner or admin).", "role")
        user = parse_user(raw[1])
        role = tokens[2].lower()
        if role not in ("owner", "admin"):
            raise UsageError(f"`{tokens[2]}` is not a role: use `owner` or `admin`.", "role")
        return Command(f"role {verb}", (user, role, *tokens[3:4]))
    raise UsageError(f"`role {tokens[0]}` is not a /dpor command.", "role")
