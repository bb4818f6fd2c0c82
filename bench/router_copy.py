"""COPY through the routing router vs one plain server (and vs the coordinator), in the same run, with
psql's ``\\copy`` as the client on every side.

    .venv/bin/python bench/router_copy.py [--rows 500000] [--reps 3] [--shards 8] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where ``copy_t`` is hash-distributed by id over ``--shards`` shards; the router runs with
``--route`` in its own process. One text file of ``--rows`` rows is loaded with ``\\copy copy_t from
file`` into the single server, through the router, and (once, it is slow) through the coordinator, the
table emptied before each load; then ``\\copy copy_t to file`` from the single server and through the
router (the coordinator cannot: "cannot copy from partitioned table"). Times are wall-clock seconds of
the psql process; the ratio is router time / single-server time (lower is better).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from router_relay import cluster_pair, peak_memory_mb, reset_peak_memory, scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.proc import run
from pgfleet.router.process import read_status, start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

TABLE = "CREATE TABLE copy_t (id bigint PRIMARY KEY, grp int, amount numeric(12, 2), note text, at date)"


def psql(local: LocalCluster, port: int, command: str) -> float:
    """Seconds psql takes to run ``command``."""
    argv = [local.binaries.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
            "-U", local.spec.superuser, "-d", local.spec.dbname, "-c", command]
    started = time.monotonic()
    run(argv, env={"PGPASSWORD": local.spec.coordinator.password}, timeout=1200, what="psql")
    return time.monotonic() - started


def write_rows(path: Path, rows: int) -> None:
    with path.open("w") as out:
        for start in range(1, rows + 1, 100_000):
            out.write("".join(f"{i}\t{i % 97}\t{i % 10007}.{i % 100:02d}\tnote number {i}\t2024-{i % 12 + 1:02d}-"
                              f"{i % 28 + 1:02d}\n" for i in range(start, min(start + 100_000, rows + 1))))
    path.chmod(0o644)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--out", default="bench/results", help="directory for router_copy.json")
    args = parser.parse_args()

    base = scratch("pgfleet-copy-")
    started = time.monotonic()
    data, dump = base / "rows.txt", base / "out.txt"
    write_rows(data, args.rows)
    single, fleet_local = cluster_pair(base)
    times: dict[str, list[float]] = {"single_in": [], "router_in": [], "coordinator_in": [], "single_out": [],
                                     "router_out": []}
    peaks = {"in": 0.0, "out": 0.0}  # the router process's peak resident size during its runs, MB
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                psql(local, local.spec.coordinator.port, TABLE)
            fleet.distribute(DistributeSpec(QualifiedName("public", "copy_t"), "id", HashSpec(args.shards)))
        router, _ = start_background(fleet_local, route=True)
        time.sleep(2)  # the router's first topology snapshot
        coordinator = fleet_local.spec.coordinator.port
        sides = [("single", single, single.spec.coordinator.port), ("router", fleet_local, router.port)]
        for rep in range(args.reps):
            for side, local, port in sides + ([("coordinator", fleet_local, coordinator)] if rep == 0 else []):
                psql(local, local.spec.coordinator.port, "TRUNCATE copy_t")
                reset_peak_memory(router.pid)
                times[f"{side}_in"].append(psql(local, port, f"\\copy copy_t from '{data}'"))
                if side == "router":
                    peaks["in"] = max(peaks["in"], peak_memory_mb(router.pid) or 0.0)
            for side, local, port in sides:
                reset_peak_memory(router.pid)
                times[f"{side}_out"].append(psql(local, port, f"\\copy copy_t to '{dump}'"))
                if side == "router":
                    peaks["out"] = max(peaks["out"], peak_memory_mb(router.pid) or 0.0)
        time.sleep(1.2)  # the status file is written every second
        status = read_status(fleet_local)
        routed = status.counters.get("routed", 0) if status else 0
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    medians = {k: statistics.median(v) for k, v in times.items() if v}
    ratios = {"copy_in_router": round(medians["router_in"] / medians["single_in"], 3),
              "copy_in_coordinator": round(medians["coordinator_in"] / medians["single_in"], 3),
              "copy_out_router": round(medians["router_out"] / medians["single_out"], 3)}
    print(f"\\copy from file, {args.rows} rows: single {medians['single_in']:.2f} s, router {medians['router_in']:.2f} s "
          f"({ratios['copy_in_router']}x), coordinator {medians['coordinator_in']:.2f} s ({ratios['copy_in_coordinator']}x)")
    print(f"\\copy to file, {args.rows} rows: single {medians['single_out']:.2f} s, router {medians['router_out']:.2f} s "
          f"({ratios['copy_out_router']}x)")
    print(f"router peak RSS: COPY FROM {peaks['in']} MB, COPY TO {peaks['out']} MB (file {data.stat().st_size >> 20} MB)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": args.rows, "reps": args.reps, "shards": args.shards, "seconds": times, "medians": medians,
              "ratios": ratios, "router_peak_rss_mb": peaks, "statements_routed": routed,
              "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_copy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"statements routed: {routed}; raw results: {out / 'router_copy.json'} ({report['elapsed_seconds']} s)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
