"""The chart of a `pgfleet bench` report (bench.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["fleet_ratio"] is not None]
    labels = [r["workload"] for r in rows]
    # Normalise so that "higher is better" everywhere: baseline/fleet for times, fleet/baseline for tps.
    def goodness(r: dict[str, Any], key: str) -> float:
        v = r[key]
        if v is None:
            return 0.0
        return float(v) if r["unit"] == "tps" else 1.0 / float(v)

    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh([i - 0.2 for i in y], [goodness(r, "fleet_ratio") for r in rows], height=0.4, label="fleet via coordinator")
    ax.barh([i + 0.2 for i in y], [goodness(r, "fast_ratio") for r in rows], height=0.4, label="fleet fast path")
    for i, r in enumerate(rows):
        if r["target"]:
            t = r["target"] if r["unit"] == "tps" else 1.0 / r["target"]
            ax.plot([t, t], [i - 0.45, i + 0.45], color="black", linewidth=2)
    ax.axvline(1.0, color="grey", linestyle=":")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("speed relative to one PostgreSQL server (higher is better; black bar = Citus target)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
