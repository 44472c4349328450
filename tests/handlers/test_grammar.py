"""The /dpor grammar: every subcommand parses, and every mistake is a usage error naming its subcommand."""

import pytest

from handlers.grammar import Command, UsageError, parse, parse_user, plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Command("help")),
        ("help", Command("help")),
        ("set", Command("set")),  # no arguments: the form
        ("SET  ", Command("set")),
        ("set prod 4977985", Command("set", ("prod", "4977985"))),
        (
            "set prod 4977985  new MSP, see ticket 12",
            Command("set", ("prod", "4977985"), rest="new MSP, see ticket 12"),
        ),
        ("SHOW prod", Command("show", ("prod",))),
        ("list", Command("list")),
        ("list 3", Command("list", page=3)),
        ("history prod", Command("history", ("prod",))),
        ("history prod 2", Command("history", ("prod",), page=2)),
        ("pending", Command("pending")),
        ("cancel 42", Command("cancel", ("42",))),
        ("role grant <@U123ABC|alex> owner prod", Command("role grant", ("U123ABC", "owner", "prod"))),
        ("role revoke U123ABC admin", Command("role revoke", ("U123ABC", "admin"))),
        ("role list", Command("role list")),
        ("role list prod", Command("role list", ("prod",))),
        ("subscribe all", Command("subscribe", ("all",))),
        ("unsubscribe", Command("unsubscribe")),
    ],
)
def test_parses(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "subcommand"),
    [
        ("set prod", "set"),
        ("show", "show"),
        ("show a b", "show"),
        ("cancel", "cancel"),
        ("list two", "list"),
        ("list 0", "list"),
        ("history", "history"),
        ("history prod x", "history"),
        ("pending 1 2", "pending"),
        ("subscribe", "subscribe"),
        ("unsubscribe prod now", "unsubscribe"),
        ("role", "role"),
        ("role grant @alex owner", "role"),
        ("role grant <@U123ABC> king", "role"),
        ("role grant <@U123ABC>", "role"),
        ("role dance", "role"),
        ("frobnicate", None),
    ],
)
def test_mistakes_name_their_subcommand(text: str, subcommand: str | None) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text)
    assert caught.value.subcommand == subcommand
    assert caught.value.problem


@pytest.mark.parametrize("token", ["<@U123ABC>", "<@U123ABC|alex>", "U123ABC", "<@W0ENTERPRISE>"])
def test_users(token: str) -> None:
    assert parse_user(token) in ("U123ABC", "W0ENTERPRISE")


@pytest.mark.parametrize("token", ["@alex", "<!channel>", "<#C123>", "u123", ""])
def test_not_users(token: str) -> None:
    with pytest.raises(UsageError):
        parse_user(token)


@pytest.mark.parametrize(
    ("sent", "typed"),
    [
        ("R&amp;D &lt;b&gt;", "R&D <b>"),
        ("ask <@U0BEN|ben> or <@U0OLIVIA>", "ask @ben or @U0OLIVIA"),
        ("see <#C0OPS|ops>", "see #ops"),
        ("<!channel> <!here> <!subteam^S0TEAM|@platform>", "@channel @here @platform"),
        (
            "<https://example.com/t/1|ticket 1> <https://example.com>",
            "ticket 1 (https://example.com/t/1) https://example.com",
        ),
        ("&amp;lt;", "&lt;"),
    ],
)
def test_plain_reads_what_was_typed(sent: str, typed: str) -> None:
    assert plain(sent) == typed


def test_set_reason_is_plain_text() -> None:
    assert parse("set prod 4977985 R&amp;D for <@U0BEN|ben>").rest == "R&D for @ben"


def test_role_user_still_read_from_markup() -> None:
    assert parse("role grant <@U0BEN|ben> admin prod").args == ("U0BEN", "admin", "prod")
