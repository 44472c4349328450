"""The sandbox renderer: each Block Kit block and mrkdwn form the bot sends; hostile text stays text."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import handlers
from bot.views import CardView
from handlers.messages import card_blocks, notification_blocks, to_dicts, when
from sandbox import tokens
from sandbox.render import Names, Origin, blocks, mrkdwn
from sandbox.tokens import SVG_EMOJI
from tests.sandbox.tree import find, tags, text_of

NAMES = Names(
    users={"U0ADMIN": "Alex Admin"},
    channels={"C0APPROVALS": "dpor-approvals"},
    now=lambda: datetime(2026, 3, 10, 12, 0, tzinfo=UTC),
)
ORIGIN = Origin("C0APPROVALS", "1773144000.000100")


# mrkdwn


def test_bold_italic_strike_and_nesting() -> None:
    assert mrkdwn("*bold* _it_ ~gone~", NAMES) == [
        {"el": "b", "kids": ["bold"]},
        " ",
        {"el": "i", "kids": ["it"]},
        " ",
        {"el": "s", "kids": ["gone"]},
    ]
    assert mrkdwn("_*both*_", NAMES) == [{"el": "i", "kids": [{"el": "b", "kids": ["both"]}]}]


def test_marks_inside_words_and_unclosed_marks_stay_text() -> None:
    for text in ("snake_case_name", "2*3*4", "* not bold *", "a *b", "file_name.txt"):
        assert mrkdwn(text, NAMES) == [text], text


def test_code_and_preformatted_keep_their_characters() -> None:
    nodes = mrkdwn("see `*not bold* <@U0ADMIN>` and ```a_b\n*c*```", NAMES)
    assert nodes[1] == {"el": "code", "class": "code", "kids": ["*not bold* <@U0ADMIN>"]}
    assert nodes[3] == {"el": "pre", "class": "pre", "kids": ["a_b\n*c*"]}


def test_mentions_channels_and_broadcasts_show_names() -> None:
    nodes = mrkdwn("<@U0ADMIN> <@U0NOBODY> <@U0X|xavier> <#C0APPROVALS> <#C0OTHER|other> <!here>", NAMES)
    assert [text_of(m) for m in find(nodes, cls="mention")] == [
        "@Alex Admin",
        "@U0NOBODY",
        "@xavier",
        "#dpor-approvals",
        "#other",
        "@here",
    ]


def test_links_show_as_text_with_the_address_as_title() -> None:
    nodes = mrkdwn("<https://example.com/a_b_c|the *docs*> <https://example.com>", NAMES)
    links = find(nodes, cls="link")
    assert [(text_of(link), link["title"]) for link in links] == [
        ("the *docs*", "https://example.com/a_b_c"),
        ("https://example.com", "https://example.com"),
    ]
    assert tags(nodes) == {"span"}  # no anchor: nothing on the page navigates anywhere


def test_a_link_to_a_script_url_is_shown_as_written() -> None:
    nodes = mrkdwn("<javascript:alert(1)|click>", NAMES)
    assert nodes == ["<javascript:alert(1)|click>"]


def test_dates_in_the_readers_time_zone_with_the_fallback_as_title() -> None:
    at = datetime(2026, 3, 10, 9, 5, tzinfo=UTC)
    nodes = mrkdwn(f"Expires {when(at)}", NAMES)
    (date,) = find(nodes, el="time")
    assert text_of(date) == "today 09:05" and date["title"] == "2026-03-10 09:05 UTC"
    berlin = Names(tz=timezone(timedelta(hours=1)), now=NAMES.now)
    assert text_of(mrkdwn(when(at + timedelta(days=1)), berlin)) == "tomorrow 10:05"
    assert text_of(mrkdwn(when(at + timedelta(days=5)), NAMES)) == "Mar 15, 2026 09:05"
    ts = int(at.timestamp())
    assert text_of(mrkdwn(f"<!date^{ts}^{{date_long}} at {{time_secs}}|x>", NAMES)) == (
        "Tuesday, March 10th, 2026 at 09:05:00"
    )
    assert text_of(mrkdwn(f"<!date^{ts}^{{date_num}} {{ago}}|x>", NAMES)) == "2026-03-10 2 hours ago"
    assert mrkdwn("<!date^soon^{date}|the fallback>", NAMES) == ["the fallback"]
    # The page writes it again in the browser's zone from the epoch and the format.
    (node,) = find(mrkdwn(f"<!date^{ts}^{{date_short_pretty}} at {{time}}|x>", NAMES), el="time")
    assert (node["epoch"], node["format"]) == (ts, "{date_short_pretty} at {time}")


def test_emoji_the_bot_uses_are_drawn_and_others_stay_as_written() -> None:
    assert mrkdwn(":white_check_mark: *Applied* at 10:05:33 :no_such_emoji:", NAMES) == [
        {
            "el": "span",
            "class": "emoji emoji-white-check-mark",
            "title": ":white_check_mark:",
            "kids": ["\u2714"],
        },
        " ",
        {"el": "b", "kids": ["Applied"]},
        " at 10:05:33 :no_such_emoji:",
    ]
    (bell,) = mrkdwn(":bell:", NAMES)
    assert bell == {"el": "span", "class": "emoji emoji-bell emoji-svg", "title": ":bell:", "kids": []}


def test_every_emoji_the_bot_uses_is_drawn_without_a_colour_emoji_font() -> None:
    used = set()
    for path in Path(handlers.__file__).parent.glob("*.py"):
        used |= set(re.findall(r":([a-z_]+):", path.read_text()))
    assert used, "the bot uses no emoji? then this test reads the wrong files"
    for name in used:
        (node,) = mrkdwn(f":{name}:", NAMES)
        assert isinstance(node, dict) and node["title"] == f":{name}:", name
        for char in text_of(node):
            # Monochrome symbols only: below the supplementary planes, where colour emoji live.
            assert ord(char) < 0x1F000 and char != "\ufe0f", (name, char)
    css = (Path(tokens.__file__).parent / "static" / "sandbox.css").read_text()
    for name in SVG_EMOJI:
        assert f".emoji-{name.replace('_', '-')}" in css, name


def test_escaped_markup_becomes_text_not_elements() -> None:
    hostile = '<script>alert(1)</script><img src=x onerror="alert(2)"> & <b>bold</b>'
    escaped = hostile.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    nodes = mrkdwn(f"*Reason*\n{escaped}", NAMES)
    assert nodes == [{"el": "b", "kids": ["Reason"]}, "\n" + hostile]


def test_unescaped_angle_brackets_never_make_elements() -> None:
    nodes = mrkdwn('<script>alert(1)</script> <img src=x onerror="alert(2)">', NAMES)
    assert tags(nodes) == set()
    assert text_of(nodes) == '<script>alert(1)</script> <img src=x onerror="alert(2)">'


def test_private_use_characters_cannot_forge_a_mention() -> None:
    nodes = mrkdwn("\ue000 <@U0ADMIN>", NAMES)
    assert text_of(nodes) == "\ufffd @Alex Admin"


# Block Kit


def test_header_divider_context_and_plain_text() -> None:
    nodes = blocks(
        [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "Card :gear: *not bold*", "emoji": True},
            },
            {"type": "divider"},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "by <@U0ADMIN>"},
                    {"type": "plain_text", "text": ":gear: plain", "emoji": False},
                    {"type": "image", "image_url": "https://example.com/i.png", "alt_text": "logo"},
                ],
            },
        ],
        "fallback",
        NAMES,
    )
    header, divider, context = nodes
    gear = {"el": "span", "class": "emoji emoji-gear", "title": ":gear:", "kids": ["\u2699"]}
    assert header == {"el": "div", "class": "blk blk-header", "kids": ["Card ", gear, " *not bold*"]}
    assert divider == {"el": "hr", "class": "blk blk-divider", "kids": []}
    assert context["class"] == "blk blk-context"
    assert [text_of(k) for k in context["kids"]] == ["by @Alex Admin", ":gear: plain", "[image: logo]"]


def test_section_with_text_fields_and_a_button_accessory() -> None:
    (section,) = blocks(
        [
            {
                "type": "section",
                "block_id": "b1",
                "text": {"type": "mrkdwn", "text": "*Reason*\nbecause"},
                "fields": [{"type": "mrkdwn", "text": "*A*\n1"}, {"type": "plain_text", "text": "B"}],
                "accessory": {
                    "type": "button",
                    "action_id": "more",
                    "value": "7",
                    "text": {"type": "plain_text", "text": "More"},
                },
            }
        ],
        "",
        NAMES,
        ORIGIN,
    )
    text, fields, accessory = section["kids"]
    assert text_of(text) == "Reason\nbecause"
    assert [text_of(f) for f in fields["kids"]] == ["A\n1", "B"]
    (button,) = find(accessory, el="button")
    assert button["action"] == {
        "channel": ORIGIN.channel,
        "ts": ORIGIN.ts,
        "action_id": "more",
        "block_id": "b1",
    }


def test_actions_with_styled_buttons_and_a_confirm_dialog() -> None:
    (actions,) = blocks(
        [
            {
                "type": "actions",
                "block_id": "dpor_request_1",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "dpor_approve",
                        "value": "1",
                        "style": "primary",
                        "text": {"type": "plain_text", "text": "Approve"},
                        "confirm": {
                            "title": {"type": "plain_text", "text": "Approve this change?"},
                            "text": {"type": "mrkdwn", "text": "Set *Contoso* (`4977985`)"},
                            "confirm": {"type": "plain_text", "text": "Approve"},
                            "deny": {"type": "plain_text", "text": "Cancel"},
                        },
                    },
                    {
                        "type": "button",
                        "action_id": "dpor_reject",
                        "value": "1",
                        "style": "danger",
                        "text": {"type": "plain_text", "text": "Reject"},
                    },
                    {"type": "static_select", "action_id": "pick"},
                ],
            }
        ],
        "",
        NAMES,
        ORIGIN,
    )
    approve, reject, select = actions["kids"]
    assert (approve["class"], text_of(approve), reject["class"]) == (
        "btn btn-primary",
        "Approve",
        "btn btn-danger",
    )
    assert approve["confirm"] == {
        "title": "Approve this change?",
        "text": [
            "Set ",
            {"el": "b", "kids": ["Contoso"]},
            " (",
            {"el": "code", "class": "code", "kids": ["4977985"]},
            ")",
        ],
        "confirm": "Approve",
        "deny": "Cancel",
        "style": "primary",
    }
    assert "confirm" not in reject and reject["action"]["action_id"] == "dpor_reject"
    assert text_of(select) == "(a static_select element, which the sandbox does not draw)"


def test_buttons_outside_a_posted_message_do_nothing() -> None:
    (actions,) = blocks(
        [
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "action_id": "x", "text": {"type": "plain_text", "text": "X"}}
                ],
            }
        ],
        "",
        NAMES,
    )
    assert "action" not in actions["kids"][0]


def test_a_message_without_blocks_shows_its_text_and_unknown_blocks_say_so() -> None:
    assert blocks([], "*hi* <@U0ADMIN>", NAMES) == [
        {
            "el": "div",
            "class": "blk blk-section",
            "kids": [
                {"el": "b", "kids": ["hi"]},
                " ",
                {"el": "span", "class": "mention", "kids": ["@Alex Admin"]},
            ],
        }
    ]
    (note,) = blocks([{"type": "rich_text", "elements": []}], "", NAMES)
    assert text_of(note) == "(a rich_text block, which the sandbox does not draw)"


def _view(**request: Any) -> CardView:
    now = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    req = SimpleNamespace(
        id=1,
        status="pending",
        partner_id="4977985",
        previous_partner_id=None,
        requester_id="U0ADMIN",
        reason='<script>alert(1)</script> <img src=x onerror="alert(2)">',
        expires_at=now + timedelta(hours=72),
        decided_by=None,
        decided_at=None,
        applied_at=None,
        error=None,
        result=None,
    )
    vars(req).update(request)
    sub = SimpleNamespace(id="11111111-1111-4111-8111-111111111111", name="Production EU", alias="prod-eu")
    return CardView(
        request=req, subscription=sub, current_name=None, new_name="Contoso MSP", approvers=[], required=1
    )  # type: ignore[arg-type]


def test_the_bots_own_approval_card_renders_every_part() -> None:
    nodes = blocks(to_dicts(card_blocks(_view())), "", NAMES, ORIGIN)
    shown = text_of(nodes)
    assert [n["class"] for n in nodes] == [
        "blk blk-header",
        "blk blk-section",
        "blk blk-section",
        "blk blk-context",
        "blk blk-divider",
        "blk blk-section",
        "blk blk-actions",
    ]
    assert "DPOR change request #1" in shown and "@Alex Admin" in shown and "Contoso MSP" in shown
    assert '<script>alert(1)</script> <img src=x onerror="alert(2)">' in shown  # the reason, as text
    assert tags(nodes) <= {"div", "b", "i", "span", "code", "hr", "time", "button"}
    assert [b["action"]["action_id"] for b in find(nodes, el="button")] == ["dpor_approve", "dpor_reject"]
    assert "&lt;" not in json.dumps(nodes) and "&amp;" not in json.dumps(nodes)


def test_the_bots_notification_renders() -> None:
    view = _view(status="applied", decided_by="U0OWNER1")
    nodes = blocks(to_dicts(notification_blocks(view, "applied")), "", NAMES)
    assert "was applied: the partner of record is now Contoso MSP (4977985)" in text_of(nodes)
    assert [n["class"] for n in nodes] == ["blk blk-section", "blk blk-context"]
