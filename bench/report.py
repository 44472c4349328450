"""The benchmark's printed output: Markdown tables ready for the README."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown(head: Sequence[str], rows: Sequence[Sequence[Any]], right_from: int = 2) -> str:
    """A Markdown table; columns from `right_from` on are numbers, aligned right."""
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def throughput(results: Sequence[Any]) -> str:
    """The wrk runs: one row per target and workload, with the ratios to the anchor and to Bolt's floor."""
    head = ["target", "workload", "req/s", "p50 ms", "p99 ms", "errors", "x anchor", "x floor", "CPU ms/req"]
    rows = [
        [
            r.target,
            r.workload,
            f"{r.requests_per_s:,.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            r.errors,
            _ratio(r.ratio_to_anchor),
            _ratio(r.ratio_to_floor),
            f"{r.cpu_ms:.2f}" if r.cpu_ms is not None else "-",
        ]
        for r in results
    ]
    return markdown(head, rows)


def latencies(target: str, rows: Sequence[Any]) -> str:
    head = ["target", "one request at a time", "requests", "p50 ms", "p99 ms", "max ms", "errors"]
    return markdown(
        head,
        [
            [
                target,
                r.measurement,
                r.samples,
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
                f"{r.max_ms:.1f}",
                r.errors,
            ]
            for r in rows
        ],
    )


def memory(rows: Sequence[tuple[str, Any]]) -> str:
    head = ["process", "RSS idle MB", "RSS after the load MB", "peak RSS MB"]

    def mb(value: float | None) -> str:
        return f"{value:.1f}" if value is not None else "-"

    return markdown(head, [[name, mb(m.idle_mb), mb(m.after_load_mb), mb(m.peak_mb)] for name, m in rows], 1)


def scale(rows: Sequence[dict]) -> str:
    head = ["workload", "p50 large/small", "p99 large/small", "throughput small/large"]
    return markdown(
        head,
        [[r["workload"], r["p50_ratio"], r["p99_ratio"], r["throughput_ratio"]] for r in rows],
        1,
    )


def lists(info: dict[str, dict]) -> str:
    head = ["list (large database)", "ms", "blocks", "longest section (chars)"]
    return markdown(head, [[name, v["ms"], v["blocks"], v["longest_section"]] for name, v in info.items()], 1)
