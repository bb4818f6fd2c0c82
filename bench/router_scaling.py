"""How the cost of ``SELECT count(*) FROM t`` grows with the rows and with the shard count: single server,
coordinator (postgres_fdw) and router (scatter/gather), by running bench/router_scatter.py's ``count``
workload once per case.

    .venv/bin/python bench/router_scaling.py [--rows 1000000,4000000,16000000] [--shards 8,32,128]
                                             [--shard-rows 4000000] [--base-shards 8] [--duration 5] [--reps 3]
                                             [--out bench/results]

The cases are every ``--rows`` count at ``--base-shards`` shards, and every ``--shards`` count at
``--shard-rows`` rows (a case in both lists runs once). Each case is one router_scatter.py run: fresh
throw-away clusters under /tmp (a single server; a fleet of coordinator + 2 workers), the same rows of
``t (id bigint primary key, grp int, val numeric, note text)`` on both, hash-distributed by id on the
fleet; pgbench ``-n -M simple -c 1 -T duration`` of the count, median of ``--reps`` interleaved runs
per side. Reported: milliseconds per count (1000 / tps) and the time ratio to the single server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from router_relay import scratch

HERE = Path(__file__).resolve().parent
SIDES = ("single", "coordinator", "router")


def cases(rows: list[int], shards: list[int], shard_rows: int, base_shards: int) -> list[tuple[int, int]]:
    found: list[tuple[int, int]] = []
    for case in [(r, base_shards) for r in rows] + [(shard_rows, s) for s in shards]:
        if case not in found:
            found.append(case)
    return found


def run_case(rows: int, shards: int, args: argparse.Namespace, out: Path) -> dict[str, object]:
    """One router_scatter.py run of the count workload; its medians as ms per count."""
    argv = [sys.executable, str(HERE / "router_scatter.py"), "--rows", str(rows), "--shards", str(shards),
            "--workloads", "count", "--duration", str(args.duration), "--reps", str(args.reps), "--out", str(out)]
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # KeyboardInterrupt: its finally stops the router and the servers
            stdout, stderr = proc.communicate(timeout=120)
            return {"rows": rows, "shards": shards, "seconds": args.timeout, "error": f"timed out: {stderr[-1000:]}"}
    seconds = round(time.monotonic() - started)
    if proc.returncode != 0:
        return {"rows": rows, "shards": shards, "seconds": seconds, "error": (stderr or stdout)[-2000:]}
    report = json.loads((out / "router_scatter.json").read_text())
    result = report["results"][0]
    row: dict[str, object] = {"rows": rows, "shards": shards, "seconds": seconds}
    for side in SIDES:
        row[f"{side}_ms"] = round(1000 / result[f"{side}_tps"], 1)
        row[f"{side}_runs_tps"] = result["runs"][side]
    for side in SIDES[1:]:
        row[f"{side}_ratio"] = result[f"{side}_time_ratio"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1000000,4000000,16000000", help="row counts at --base-shards shards")
    parser.add_argument("--shards", default="8,32,128", help="shard counts at --shard-rows rows")
    parser.add_argument("--shard-rows", type=int, default=4_000_000)
    parser.add_argument("--base-shards", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per side")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per case")
    parser.add_argument("--out", default="bench/results", help="directory for router_scaling.json")
    args = parser.parse_args()
    base = scratch("pgfleet-scaling-")
    started = time.monotonic()
    results: list[dict[str, object]] = []
    print(f"{'rows':>11} {'shards':>6} {'single ms':>10} " + " ".join(f"{s + ' ms':>15} {'ratio':>6}" for s in SIDES[1:])
          + f" {'run s':>6}", flush=True)
    try:
        todo = cases([int(r) for r in args.rows.split(",")], [int(s) for s in args.shards.split(",")],
                     args.shard_rows, args.base_shards)
        for i, (rows, shards) in enumerate(todo):
            out = base / str(i)
            row = run_case(rows, shards, args, out)
            results.append(row)
            if "error" in row:
                print(f"{rows:>11,} {shards:>6} failed after {row['seconds']} s: {row['error']}", flush=True)
                continue
            print(f"{rows:>11,} {shards:>6} {row['single_ms']:>10} " + " ".join(
                f"{row[f'{s}_ms']:>15} {row[f'{s}_ratio']:>6}" for s in SIDES[1:]) + f" {row['seconds']:>6}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    report = {"duration": args.duration, "reps": args.reps, "results": results,
              "elapsed_seconds": round(time.monotonic() - started)}
    (dest / "router_scaling.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {dest / 'router_scaling.json'} ({report['elapsed_seconds']} s)", file=sys.stderr)
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
