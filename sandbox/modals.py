"""Views as the page draws them: a modal (title, blocks, inputs, submit and close, inline errors) and the
App Home tab; and the state a submission carries, made from what the person typed or picked.

A modal's blocks are the renderer's nodes (sandbox.render) except input blocks, which become
`{"input": {...}}` descriptions the page turns into form controls: plain_text_input (single or multiline),
external_select (typeahead: the page asks the bot through block_suggestion as the person types) and
static_select. Nothing here trusts the page: the state sent to the bot is built from the view's own
blocks, taking from the page only the strings typed and the option picked.
"""

from __future__ import annotations

from typing import Any

from sandbox import render, tokens
from sandbox.surfaces import View

JSONDict = dict[str, Any]
INPUTS = ("plain_text_input", "external_select", "static_select")
MAX_TYPED = 3000  # Slack's own limit on a plain_text_input


def modal(view: View, names: render.Names, errors: dict[str, str] | None = None) -> JSONDict:
    """The top modal of a person's stack, for the page."""
    errors = errors or {}
    fields = view.fields
    return {
        "id": view.id,
        "hash": view.hash,
        "callback_id": view.callback_id,
        "title": _plain(fields.get("title"), "App"),
        "submit": _plain(fields.get("submit"), "") or None,
        "close": _plain(fields.get("close"), "Cancel"),
        "blocks": [_block(b, names, view, errors) for b in view.blocks],
        "errors": dict(errors),
    }


def home(view: View, names: render.Names) -> JSONDict:
    """A published Home tab, for the page: its blocks, buttons that click in the view."""
    return {
        "id": view.id,
        "hash": view.hash,
        "blocks": render.blocks(view.blocks, "", names, render.Origin(view=view.id)),
    }


def _block(b: JSONDict, names: render.Names, view: View, errors: dict[str, str]) -> JSONDict:
    if b.get("type") != "input":
        return {"node": render.block(b, names, render.Origin(view=view.id))}
    element = b.get("element") if isinstance(b.get("element"), dict) else {}
    kind = str(element.get("type") or "")
    block_id = str(b.get("block_id") or "")
    described: JSONDict = {
        "block_id": block_id,
        "action_id": str(element.get("action_id") or ""),
        "type": kind if kind in INPUTS else "unsupported",
        "label": _plain(b.get("label"), ""),
        "hint": render.text_object(b.get("hint"), names) if b.get("hint") else [],
        "optional": bool(b.get("optional", False)),
        "placeholder": _plain(element.get("placeholder"), ""),
        "error": errors.get(block_id),
    }
    if kind == "plain_text_input":
        described["multiline"] = bool(element.get("multiline", False))
        described["max_length"] = element.get("max_length")
        described["initial"] = _typed(view, block_id, described["action_id"], element)
    elif kind in ("external_select", "static_select"):
        described["min_query_length"] = int(
            element.get("min_query_length", 3 if kind == "external_select" else 0)
        )
        described["initial"] = _picked(view, block_id, described["action_id"], element)
        if kind == "static_select":
            described["options"] = [_option(o) for o in _options(element)]
    else:
        described["note"] = f"(a {kind or 'missing'} input, which the sandbox does not draw)"
    return {"input": described}


def options(answer: Any) -> list[JSONDict]:
    """The bot's answer to a block_suggestion, as a flat list of {text, value, description, group}."""
    if not isinstance(answer, dict):
        return []
    found = [_option(o) for o in answer.get("options") or [] if isinstance(o, dict)]
    for group in answer.get("option_groups") or []:
        if isinstance(group, dict):
            label = _plain(group.get("label"), "")
            found += [
                {**_option(o), "group": label} for o in group.get("options") or [] if isinstance(o, dict)
            ]
    return found


def state(view: View, typed: Any) -> JSONDict:
    """Slack's `state.values` for the view's inputs: block_id -> action_id -> value, from what the page
    sent as `{block_id: {"value": text}}` or `{block_id: {"option": {"text": ..., "value": ...}}}`."""
    typed = typed if isinstance(typed, dict) else {}
    values: JSONDict = {}
    for b in view.blocks:
        element = b.get("element")
        if b.get("type") != "input" or not isinstance(element, dict) or element.get("type") not in INPUTS:
            continue
        block_id, action_id = str(b.get("block_id") or ""), str(element.get("action_id") or "")
        given = typed.get(block_id) if isinstance(typed.get(block_id), dict) else {}
        if element["type"] == "plain_text_input":
            text = given.get("value")
            text = str(text)[:MAX_TYPED] if isinstance(text, str) and text != "" else None
            value: JSONDict = {"type": "plain_text_input", "value": text}
        else:
            picked = given.get("option")
            option = None
            if isinstance(picked, dict) and isinstance(picked.get("value"), str):
                text = str(picked.get("text") or picked["value"])[:MAX_TYPED]
                option = {
                    "text": {"type": "plain_text", "text": text, "emoji": True},
                    "value": picked["value"][:MAX_TYPED],
                }
            value = {"type": element["type"], "selected_option": option}
        values.setdefault(block_id, {})[action_id] = value
    return values


def _typed(view: View, block_id: str, action_id: str, element: JSONDict) -> str:
    current = view.state.get("values", {}).get(block_id, {}).get(action_id, {})
    if isinstance(current, dict) and isinstance(current.get("value"), str):
        return current["value"]
    return str(element.get("initial_value") or "")


def _picked(view: View, block_id: str, action_id: str, element: JSONDict) -> JSONDict | None:
    current = view.state.get("values", {}).get(block_id, {}).get(action_id, {})
    option = current.get("selected_option") if isinstance(current, dict) else None
    option = option or element.get("initial_option")
    return _option(option) if isinstance(option, dict) else None


def _options(element: JSONDict) -> list[JSONDict]:
    found = [o for o in element.get("options") or [] if isinstance(o, dict)]
    for group in element.get("option_groups") or []:
        if isinstance(group, dict):
            found += [o for o in group.get("options") or [] if isinstance(o, dict)]
    return found


def _option(o: JSONDict) -> JSONDict:
    text = _plain(o.get("text"), str(o.get("value") or ""))
    option: JSONDict = {"text": text, "value": str(o.get("value") or "")}
    if o.get("description"):
        option["description"] = _plain(o.get("description"), "")
    return option


def _plain(obj: Any, default: str) -> str:
    """A text object's text, its shortcodes as symbols (the page puts it in as text)."""
    if isinstance(obj, dict):
        return tokens.emoji_text(str(obj.get("text") or default))
    return str(obj) if obj else default
