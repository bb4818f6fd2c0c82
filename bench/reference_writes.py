"""Reference-table writes: a fleet (coordinator + 2 workers) against one plain server, same run, pgbench.

    .venv/bin/python bench/reference_writes.py [--rows 200000] [--seconds 5] [--reps 3]

1. One-row UPDATE by primary key of a --rows-row table, 1 client: a reference table through the
   coordinator against the same table on the single server (median latency of --reps runs).
2. pgbench TPC-B-like (scale 1, 4 clients): pgbench_branches and pgbench_tellers reference tables,
   pgbench_accounts hash-distributed by aid (8 shards), pgbench_history local on the coordinator,
   against the four plain tables on the single server: tps and failed transactions.
Both sides use the same `--fast` server settings and share the machine's cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from pgfleet.pgbench import run_pgbench
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
        script = ONE_ROW_UPDATE.format(rows=args.rows)
        one = ["-n", "-c", "1", "-T", str(args.seconds)]
        base, ref = [], []
        for _ in range(args.reps):  # interleaved, so both sides see the same machine load
            base.append(run_pgbench(single, "coord", one, script))
            ref.append(run_pgbench(fleet_local, "coord", one, script))
        b, r = _median(base, "latency_ms"), _median(ref, "latency_ms")
        print(f"one-row UPDATE, {args.rows} rows, 1 client: single {b:.3f} ms, reference table {r:.3f} ms, "
              f"ratio {r / b:.2f}")

        for local in (single, fleet_local):
            run_pgbench(local, "coord", ["-i", "-q", "-I", "dtgp", "-s", "1"])
        for table in ("pgbench_branches", "pgbench_tellers"):
            fleet.reference(ReferenceSpec(QualifiedName("public", table)))
        fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(8)))
        tpcb = ["-n", "-c", "4", "-j", "2", "-T", str(args.seconds)]
        base, ref = [], []
        for _ in range(args.reps):
            base.append(run_pgbench(single, "coord", tpcb))
            ref.append(run_pgbench(fleet_local, "coord", tpcb))
        bt, rt = _median(base, "tps"), _median(ref, "tps")
        print(f"TPC-B-like, 4 clients: single {bt:.0f} tps ({sum(x['failed'] for x in base):.0f} failed of "
              f"{sum(x['transactions'] for x in base):.0f}), fleet {rt:.0f} tps "
              f"({sum(x['failed'] for x in ref):.0f} failed of {sum(x['transactions'] for x in ref):.0f}), "
              f"ratio {rt / bt:.3f}")


if __name__ == "__main__":
    main()
