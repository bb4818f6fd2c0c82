"""Reference-table writes: a fleet (coordinator + 2 workers) against one plain server, same run, pgbench.

    .venv/bin/python bench/reference_writes.py [--rows 200000] [--seconds 5] [--reps 3] [--clients 1]

1. One-row UPDATE by primary key of a --rows-row table, --clients clients: a reference table through
   the coordinator and through the router (`pgfleet router --route`, which relays a reference-table write
   in autocommit to the coordinator) against the same table on the single server (median latency of
   --reps runs).
2. pgbench TPC-B-like (scale 1, 4 clients): pgbench_branches and pgbench_tellers reference tables,
   pgbench_accounts hash-distributed by aid (8 shards), pgbench_history local on the coordinator,
   against the four plain tables on the single server, through the coordinator and through the router
   (where the teller, branch and history writes join each transaction that began on a worker:
   router/refpart.py): tps and failed transactions.
All sides use the same `--fast` server settings and share the machine's cores; pgbench -M simple.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pgfleet.pgbench import run_pgbench
from pgfleet.router.process import start_background, stop_background
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

ONE_ROW_UPDATE = "\\set id random(1, {rows})\nUPDATE ref SET v = v + 1 WHERE id = :id;\n"


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1, help="clients of the one-row UPDATE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgfleet-refbench-", dir="/tmp") as tmp:
        Path(tmp).chmod(0o755)
        single = LocalCluster.create(Path(tmp) / "single", workers=0, fast=True)
        fleet_local = LocalCluster.create(Path(tmp) / "fleet", workers=2, fast=True)
        try:
            with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
                fleet.register_local_workers()
                report(single, fleet_local, fleet, args)
        finally:
            stop_background(fleet_local)
            single.destroy()
            fleet_local.destroy()


def report(single: LocalCluster, fleet_local: LocalCluster, fleet: Fleet, args: argparse.Namespace) -> None:
    with Fleet(single.endpoint("coord"), single) as plain:
        for f in (plain, fleet):
            f.conn().execute("CREATE TABLE ref (id int PRIMARY KEY, v int NOT NULL, pad text)")
            f.conn().execute("INSERT INTO ref SELECT g, 0, repeat('x', 40) FROM generate_series(1, %s) g",
                             (args.rows,))
            f.conn().execute("ANALYZE ref")
        fleet.reference(ReferenceSpec(QualifiedName("public", "ref")))
        router, _ = start_background(fleet_local, route=True)
        script = ONE_ROW_UPDATE.format(rows=args.rows)
        one = ["-n", "-c", str(args.clients), "-j", str(min(args.clients, 2)), "-T", str(args.seconds)]
        base, ref, routed = [], [], []
        for _ in range(args.reps):  # interleaved, so every side sees the same machine load
            base.append(run_pgbench(single, "coord", one, script))
            ref.append(run_pgbench(fleet_local, "coord", one, script))
            routed.append(run_pgbench(fleet_local, "coord", one, script, port=router.port))
        b, r, t = _median(base, "latency_ms"), _median(ref, "latency_ms"), _median(routed, "latency_ms")
        print(f"one-row UPDATE, {args.rows} rows, {args.clients} client(s): single {b:.3f} ms, reference table through the "
              f"coordinator {r:.3f} ms (ratio {r / b:.2f}), through the router {t:.3f} ms (ratio {t / b:.2f})")

        for local in (single, fleet_local):
            run_pgbench(local, "coord", ["-i", "-q", "-I", "dtgp", "-s", "1"])
        for table in ("pgbench_branches", "pgbench_tellers"):
            fleet.reference(ReferenceSpec(QualifiedName("public", table)))
        fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(8)))
        tpcb = ["-n", "-c", "4", "-j", "2", "-T", str(args.seconds)]
        time.sleep(2.5)  # the router reads the catalog every 2 s
        sides: dict[str, list[dict[str, float]]] = {"single": [], "coordinator": [], "router": []}
        for _ in range(args.reps):
            sides["single"].append(run_pgbench(single, "coord", tpcb))
            sides["coordinator"].append(run_pgbench(fleet_local, "coord", tpcb))
            sides["router"].append(run_pgbench(fleet_local, "coord", tpcb, port=router.port))
        bt = _median(sides["single"], "tps")
        print("TPC-B-like, 4 clients: " + ", ".join(
            f"{side} {_median(runs, 'tps'):.0f} tps ({sum(x['failed'] for x in runs):.0f} failed of "
            f"{sum(x['transactions'] for x in runs):.0f}, ratio {_median(runs, 'tps') / bt:.3f})"
            for side, runs in sides.items()))


if __name__ == "__main__":
    main()
