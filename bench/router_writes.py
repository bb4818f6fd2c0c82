"""Multi-shard writes through the routing router vs a single server and vs the coordinator (postgres_fdw),
in the same run, with psql as the client on every side (``\\timing``: the statement's round trip).

    .venv/bin/python bench/router_writes.py [--rows 100000] [--insert-rows 500000] [--reps 3] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers, ``--fast`` settings) where the tables are hash-distributed over 8 shards, ``dst`` co-located
with ``src``; the router runs with ``--route`` in its own process. Cases, interleaved per repetition:

1. ``UPDATE upd SET v = v + 1`` — no key in the statement, every one of ``--rows`` rows;
2. ``INSERT INTO dst SELECT * FROM src`` — ``--insert-rows`` rows between co-located tables (``dst``
   emptied with TRUNCATE before each run, not timed);
3. ``INSERT INTO dst SELECT * FROM stage`` — the same rows from a plain table of the coordinator's (a
   staging table an ETL job loaded): the router streams them from the coordinator to their shards.

Prints the median milliseconds of each side and the ratios to the single server; writes a JSON report.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

from router_relay import cluster_pair, scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.proc import run
from pgfleet.router.process import start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

SETUP = [
    "CREATE TABLE upd (id bigint PRIMARY KEY, v int NOT NULL, pad text)",
    "CREATE TABLE src (id bigint PRIMARY KEY, v int NOT NULL, pad text)",
    "CREATE TABLE dst (id bigint PRIMARY KEY, v int NOT NULL, pad text)",
    "CREATE TABLE stage (id bigint, v int, pad text)",
]
CASES = {
    "update_without_key": ("UPDATE upd SET v = v + 1", None),
    "insert_select_colocated": ("INSERT INTO dst SELECT * FROM src", "TRUNCATE dst"),
    "insert_select_from_local": ("INSERT INTO dst SELECT * FROM stage", "TRUNCATE dst"),
}


def psql_ms(local: LocalCluster, port: int, statement: str) -> float:
    """The statement's time as psql's \\timing reports it."""
    argv = [local.binaries.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
            "-U", local.spec.superuser, "-d", local.spec.dbname, "-c", "\\timing on", "-c", statement]
    out = run(argv, env={"PGPASSWORD": local.spec.coordinator.password}, timeout=900, what="psql").stdout
    match = re.search(r"Time: ([\d.]+) ms", out)
    if not match:
        raise RuntimeError(f"no timing in psql output: {out[-300:]}")
    return float(match.group(1))


def psql(local: LocalCluster, port: int, statement: str) -> None:
    argv = [local.binaries.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port),
            "-U", local.spec.superuser, "-d", local.spec.dbname, "-c", statement]
    run(argv, env={"PGPASSWORD": local.spec.coordinator.password}, timeout=900, what="psql")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the UPDATE without key")
    parser.add_argument("--insert-rows", type=int, default=500_000, help="rows of the INSERT … SELECT")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    base = scratch("pgfleet-writes-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                port = local.spec.coordinator.port
                for statement in SETUP:
                    psql(local, port, statement)
                psql(local, port, f"INSERT INTO upd SELECT g, 0, repeat('x', 40) FROM generate_series(1, {args.rows}) g")
                psql(local, port, f"INSERT INTO src SELECT g, g % 1000, repeat('y', 40) FROM generate_series(1, {args.insert_rows}) g")
                psql(local, port, "INSERT INTO stage SELECT * FROM src")
            for name in ("upd", "src"):
                fleet.distribute(DistributeSpec(QualifiedName("public", name), "id", HashSpec(8)))
            fleet.distribute(DistributeSpec(QualifiedName("public", "dst"), "id", colocate_with=QualifiedName("public", "src")))
            for local in (single, fleet_local):
                psql(local, local.spec.coordinator.port, "VACUUM ANALYZE")
        proc, _ = start_background(fleet_local, route=True)
        time.sleep(1.0)
        sides = {"single": (single, single.spec.coordinator.port),
                 "coordinator": (fleet_local, fleet_local.spec.coordinator.port),
                 "router": (fleet_local, proc.port)}
        for case, (statement, reset) in CASES.items():
            times: dict[str, list[float]] = {side: [] for side in sides}
            for _ in range(args.reps):  # interleaved, so every side sees the same machine load
                for side, (local, port) in sides.items():
                    if reset:
                        psql(local, port, reset)
                    times[side].append(psql_ms(local, port, statement))
            medians = {side: statistics.median(v) for side, v in times.items()}
            row = {"case": case, "statement": statement, **{f"{k}_ms": round(v, 1) for k, v in medians.items()},
                   "coordinator_ratio": round(medians["coordinator"] / medians["single"], 2),
                   "router_ratio": round(medians["router"] / medians["single"], 2)}
            results.append(row)
            print(f"{case}: single {medians['single']:.0f} ms, coordinator {medians['coordinator']:.0f} ms "
                  f"({row['coordinator_ratio']}×), router {medians['router']:.0f} ms ({row['router_ratio']}×)", flush=True)
        stop_background(fleet_local)
    finally:
        single.destroy()
        fleet_local.destroy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"rows": args.rows, "insert_rows": args.insert_rows, "reps": args.reps,
              "seconds": round(time.monotonic() - started), "results": results}
    (out / "router_writes.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'router_writes.json'} in {report['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
