"""Select-only through the routing router vs a single server and vs the coordinator (postgres_fdw), in
the same run, with pgbench as the client on every side.

    .venv/bin/python bench/router_routed.py [--duration 5] [--reps 3] [--scale 10] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where pgbench_accounts is hash-distributed by aid over 8 shards; the router runs with
``--route`` in its own process. ``-M simple`` statements are routed to the workers; ``-M prepared``
uses the extended protocol, which this router step still relays to the coordinator.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from router_relay import arguments, pgbench, scratch, tps

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import read_status, start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

CASES = [(1, "simple"), (4, "simple"), (4, "prepared")]


def main() -> None:
    args = arguments(__doc__, "router_routed.json")

    base = scratch("pgfleet-routed-")
    started = time.monotonic()
    single = LocalCluster.create(base / "single", workers=0, fast=True)
    fleet_local = LocalCluster.create(base / "fleet", workers=2, fast=True)
    results = []
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                pgbench(local, local.spec.coordinator.port, ["-i", "-q", "-s", str(args.scale)])
            fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(8)))
            fleet.conn().execute("VACUUM ANALYZE")
        proc, _ = start_background(fleet_local, route=True)
        for clients, mode in CASES:
            common = ["-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(args.duration)]
            sides: dict[str, list[float]] = {"single": [], "coordinator": [], "router": []}
            for _ in range(args.reps):
                sides["single"].append(tps(single, single.spec.coordinator.port, common))
                sides["coordinator"].append(tps(fleet_local, fleet_local.spec.coordinator.port, common))
                sides["router"].append(tps(fleet_local, proc.port, common))
            medians = {k: statistics.median(v) for k, v in sides.items()}
            row = {"clients": clients, "mode": mode, **{f"{k}_tps": v for k, v in medians.items()},
                   "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3),
                   "router_ratio": round(medians["router"] / medians["single"], 3), "runs": sides}
            results.append(row)
            print(f"pgbench -S -M {mode:8} -c {clients}: single {medians['single']:8.0f}  coordinator "
                  f"{medians['coordinator']:8.0f} ({row['coordinator_ratio']:.3f})  router {medians['router']:8.0f} "
                  f"({row['router_ratio']:.3f})", flush=True)
        status = read_status(fleet_local)
        routed = status.routed if status else 0
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"duration": args.duration, "reps": args.reps, "scale": args.scale, "results": results,
              "statements_routed": routed, "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_routed.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"statements routed: {routed}; raw results: {out / 'router_routed.json'} ({report['elapsed_seconds']} s)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
