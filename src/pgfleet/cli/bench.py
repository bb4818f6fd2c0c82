"""The benchmark against a single server started in the same run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import SpecError
from .common import err, out


@click.command()
@click.option("--quick", is_flag=True, help="Small data and short runs (a smoke test, not a measurement).")
@click.option("--rows", type=int, help="Rows in t (default 2,000,000).")
@click.option("--duration", type=float, help="Seconds per pgbench run (default 4).")
@click.option("--reps", type=int, help="Interleaved repetitions per workload (default 3).")
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False),
              help="Where bench.json and bench.png go.")
@click.option("--only", help="Comma-separated groups to run: lookups, scans, writes, tpcb, growth (default: all).")
def bench(quick: bool, rows: int | None, duration: float | None, reps: int | None, out_dir: str,
          only: str | None) -> None:
    """Benchmark a fleet against a single server started in the same run; print fleet/baseline ratios."""
    from dataclasses import replace

    from ..bench import GROUPS, QUICK, Config, run_bench

    groups = tuple(g.strip() for g in only.split(",")) if only else GROUPS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SpecError(f"unknown benchmark group {unknown[0]!r}", hint=f"choose from {', '.join(GROUPS)}")
    cfg = QUICK if quick else Config()
    if rows is not None:
        cfg = replace(cfg, rows=rows)
    if duration is not None:
        cfg = replace(cfg, duration=duration)
    if reps is not None:
        cfg = replace(cfg, reps=reps)
    report = run_bench(cfg, Path(out_dir), lambda m: err.print(m, highlight=False), only=groups)
    out.print(render_bench(report))
    out.print(f"raw results: {Path(out_dir) / 'bench.json'}, chart: {Path(out_dir) / 'bench.png'} "
              f"({report['elapsed_seconds']} s)")

def render_bench(report: dict[str, Any]) -> Table:
    table = Table(title="fleet / single server (median; tps: higher is better, times: lower is better)")
    for col in ("workload", "unit", "single", "fleet", "ratio", "fast path", "ratio", "Citus target", "met"):
        table.add_column(col)

    def fmt(v: Any, digits: int = 4) -> str:
        return "" if v is None else f"{v:.{digits}g}"

    for r in report["results"]:
        met = []
        for key, label in (("fleet_met", "coord"), ("fast_met", "fast")):
            if r[key] is not None:
                met.append(f"{label} {'yes' if r[key] else 'no'}")
        table.add_row(r["workload"], r["unit"], fmt(r["baseline_median"]), fmt(r["fleet_median"]),
                      fmt(r["fleet_ratio"], 3), fmt(r["fast_median"]), fmt(r["fast_ratio"], 3), r["target_text"],
                      ", ".join(met))
    return table


COMMANDS = (bench,)
