"""Render a `pgfleet bench` JSON report as the Markdown tables of docs/benchmarks.md.

    python bench/report.py bench/results/bench.json > /tmp/table.md
"""

from __future__ import annotations

import json
import sys
from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}g}"


def verdict(r: dict[str, Any], key: str) -> str:
    met = r[key]
    return "" if met is None else ("**met**" if met else "not met")


def render(report: dict[str, Any]) -> str:
    lines = [
        "| workload | unit | single server | fleet via coordinator | ratio | fast path | ratio | Citus target "
        "| coordinator | fast path |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workload']} | {r['unit']} | {fmt(r['baseline_median'], 4)} | {fmt(r['fleet_median'], 4)} "
            f"| {fmt(r['fleet_ratio'])} | {fmt(r['fast_median'], 4)} | {fmt(r['fast_ratio'])} | {r['target_text']} "
            f"| {verdict(r, 'fleet_met')} | {verdict(r, 'fast_met')} |")
    growth = report.get("growth")
    if growth:
        lines += ["", "| shards | point-lookup latency through the coordinator (ms, 1 client) |", "|---|---|"]
        for k, v in growth["lookup_latency_ms"].items():
            lines.append(f"| {k} | {fmt(v)} |")
        lines += ["", "| rows | count(*) single (s) | fleet via coordinator (s) | fast path (s) |", "|---|---|---|---|"]
        for k, v in growth["count_seconds"].items():
            lines.append(f"| {int(k):,} | {fmt(v['single'])} | {fmt(v['fleet'])} | {fmt(v['fast'])} |")
        lines += ["", "| coordinator clients | postgres_fdw connections per worker |", "|---|---|"]
        for k, v in growth["worker_connections"].items():
            lines.append(f"| {k} | {', '.join(f'{n}: {c}' for n, c in v.items())} |")
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(render(json.load(handle)))
