"""Multi-shard reads through the routing router (scatter/gather) vs a single server and vs the
coordinator (postgres_fdw), in the same run, with pgbench -f as the client on every side.

    .venv/bin/python bench/router_scatter.py [--rows 1000000] [--shards 8] [--duration 5] [--reps 3]
                                             [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where ``t (id bigint, grp int, val numeric, note text)`` is hash-distributed by id; the same
rows on both. Workloads (simple protocol, as psql): ``count(*)``, GROUP BY a non-key column with sum(),
an ORDER BY … LIMIT 10 over a non-key column, and fetching every row. Ratios are time ratios to the
single server (single tps / side tps: 1.3 means 1.3× slower).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from router_relay import cluster_pair, peak_memory_mb, reset_peak_memory, scratch, tps

from pgfleet.cluster.fleet import Fleet
from pgfleet.execute.connect import connect
from pgfleet.router.process import start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

WORKLOADS = {
    "count": "SELECT count(*) FROM t;",
    "group-by": "SELECT grp, sum(val) FROM t GROUP BY grp;",
    "order-limit": "SELECT * FROM t ORDER BY val DESC LIMIT 10;",
    "fetch-all": "SELECT * FROM t;",
}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per case")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated names")
    parser.add_argument("--protocol", default="simple", choices=["simple", "extended"],
                        help="pgbench -M on every side (extended: Parse/Bind/Execute, as drivers send statements)")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    base = scratch("pgfleet-scatter-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    scripts = base / "scripts"
    scripts.mkdir()
    scripts.chmod(0o755)
    try:
        load = ("CREATE TABLE t (id bigint PRIMARY KEY, grp int, val numeric, note text);"
                f"INSERT INTO t SELECT g, g % 100, (g::bigint * 7919 % 100003) / 100.0, 'note ' || g "
                f"FROM generate_series(1, {args.rows}) g;")
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            with connect(single.endpoint("coord")) as conn:
                conn.execute(load)
                conn.execute("VACUUM ANALYZE t")
            fleet.conn().execute(load)
            fleet.distribute(DistributeSpec(QualifiedName("public", "t"), "id", HashSpec(args.shards)))
            fleet.conn().execute("VACUUM ANALYZE")
            for node in fleet.topology().nodes:
                if node.role == "worker":
                    with fleet.worker_conn(node) as w:
                        w.execute("VACUUM ANALYZE")
        proc, _ = start_background(fleet_local, route=True, processes=1)
        for name in args.workloads.split(","):
            script = scripts / f"{len(results)}.sql"
            script.write_text(WORKLOADS[name] + "\n")
            script.chmod(0o644)
            common = ["-n", "-M", args.protocol, "-c", "1", "-T", str(args.duration), "-f", str(script)]
            sides: dict[str, list[float]] = {"single": [], "coordinator": [], "router": []}
            reset_peak_memory(proc.pid)
            for _ in range(args.reps):
                sides["single"].append(tps(single, single.spec.coordinator.port, common))
                sides["coordinator"].append(tps(fleet_local, fleet_local.spec.coordinator.port, common))
                sides["router"].append(tps(fleet_local, proc.port, common))
            medians = {k: statistics.median(v) for k, v in sides.items()}
            row = {"workload": name, "sql": WORKLOADS[name], **{f"{k}_tps": v for k, v in medians.items()},
                   "coordinator_time_ratio": round(medians["single"] / medians["coordinator"], 2),
                   "router_time_ratio": round(medians["single"] / medians["router"], 2), "runs": sides,
                   "router_peak_rss_mb": peak_memory_mb(proc.pid)}
            results.append(row)
            print(f"{name:12} single {medians['single']:8.2f} tps  coordinator {medians['coordinator']:8.2f} "
                  f"({row['coordinator_time_ratio']:.2f}x)  router {medians['router']:8.2f} "
                  f"({row['router_time_ratio']:.2f}x)  router peak RSS {row['router_peak_rss_mb']} MB", flush=True)
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
        shutil.rmtree(base, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": args.rows, "shards": args.shards, "protocol": args.protocol, "duration": args.duration, "reps": args.reps,
              "results": results, "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_scatter.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {out / 'router_scatter.json'} ({report['elapsed_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
