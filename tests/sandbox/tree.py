"""Reading the sandbox renderer's element trees in tests."""

from __future__ import annotations

from typing import Any


def text_of(nodes: Any) -> str:
    """The text a reader sees."""
    if isinstance(nodes, str):
        return nodes
    if isinstance(nodes, dict):
        return text_of(nodes.get("kids", []))
    return "".join(text_of(n) for n in nodes)


def find(nodes: Any, **match: str) -> list[dict[str, Any]]:
    """Every element whose attributes include `match`; `cls` matches one of its classes."""
    found: list[dict[str, Any]] = []
    if isinstance(nodes, list):
        for n in nodes:
            found += find(n, **match)
    elif isinstance(nodes, dict):
        classes = str(nodes.get("class", "")).split()
        if all((v in classes) if k == "cls" else nodes.get(k) == v for k, v in match.items()):
            found.append(nodes)
        found += find(nodes.get("kids", []), **match)
    return found


def tags(nodes: Any) -> set[str]:
    return {n["el"] for n in find(nodes)}
