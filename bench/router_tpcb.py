"""pgbench TPC-B-like (-M simple, read-write) through the routing router vs a single server and vs the
coordinator (postgres_fdw), in the same run, with pgbench as the client on every side.

    .venv/bin/python bench/router_tpcb.py [--duration 20] [--reps 1] [--scale 10] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where all four pgbench tables are hash-distributed (accounts and history by aid, branches by
bid, tellers by tid, 8 shards). Through the router each transaction runs on the workers: on one worker
with a plain COMMIT, or on two with two-phase commit. Reported: tps, ratio to the single server, and
the failed transactions of each side (the coordinator runs worker transactions in REPEATABLE READ).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from router_relay import arguments, pgbench, scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.pgbench import pgbench_numbers
from pgfleet.router.process import read_status, start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

TABLES = (("accounts", "aid"), ("history", "aid"), ("branches", "bid"), ("tellers", "tid"))


def main() -> None:
    args = arguments(__doc__, "router_tpcb.json")
    base = scratch("pgfleet-tpcb-")
    started = time.monotonic()
    single = LocalCluster.create(base / "single", workers=0, fast=True)
    fleet_local = LocalCluster.create(base / "fleet", workers=2, fast=True)
    runs: dict[str, list[dict[str, float]]] = {"single": [], "coordinator": [], "router": []}
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                pgbench(local, local.spec.coordinator.port, ["-i", "-q", "-s", str(args.scale)])
            for table, key in TABLES:
                fleet.distribute(DistributeSpec(QualifiedName("public", f"pgbench_{table}"), key, HashSpec(8)))
            fleet.conn().execute("VACUUM ANALYZE")
        proc, _ = start_background(fleet_local, route=True)
        common = ["-n", "-M", "simple", "-c", "4", "-j", "2", "-T", str(args.duration)]
        for _ in range(args.reps):
            for side, local, port in (("single", single, single.spec.coordinator.port),
                                      ("coordinator", fleet_local, fleet_local.spec.coordinator.port),
                                      ("router", fleet_local, proc.port)):
                numbers = pgbench_numbers(pgbench(local, port, common))
                runs[side].append(numbers)
                print(f"{side:12} tps {numbers['tps']:8.1f}  failed {int(numbers.get('failed', 0))}", flush=True)
        time.sleep(1.2)  # the status file is written every second
        status = read_status(fleet_local)
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    medians = {side: statistics.median(n["tps"] for n in numbers) for side, numbers in runs.items()}
    failed = {side: sum(int(n.get("failed", 0)) for n in numbers) for side, numbers in runs.items()}
    report = {"duration": args.duration, "reps": args.reps, "scale": args.scale, "clients": 4, "mode": "simple",
              "tps": medians, "failed": failed,
              "router_ratio": round(medians["router"] / medians["single"], 3),
              "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3),
              "router_status": None if status is None else {
                  k: getattr(status, k) for k in ("worker_transactions", "two_phase_commits", "coordinator_transactions",
                                                  "recovered_commits", "recovered_aborts", "in_doubt")},
              "runs": runs, "elapsed_seconds": round(time.monotonic() - started)}
    print(f"TPC-B -M simple -c 4: single {medians['single']:.0f} tps, coordinator {medians['coordinator']:.0f} "
          f"({report['coordinator_ratio']}, {failed['coordinator']} failed), router {medians['router']:.0f} "
          f"({report['router_ratio']}, {failed['router']} failed)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "router_tpcb.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {out / 'router_tpcb.json'}; router counters: {report['router_status']}", file=sys.stderr)


if __name__ == "__main__":
    main()
