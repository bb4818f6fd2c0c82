"""INSERTs that leave the key to its identity (every ORM's create) through the routing router vs a single
server and vs the coordinator (postgres_fdw), in the same run, with pgbench -M simple as the client.

    .venv/bin/python bench/router_inserts.py [--duration 5] [--reps 3] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers, ``--fast`` settings) where ``ticket (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note
text)`` is hash-distributed by id over 8 shards; the router runs with ``--route`` in its own process and
draws the keys from the coordinator's sequence (router/keyfill.py). Cases, interleaved per repetition, 1
and 4 clients:

1. autocommit ``INSERT INTO ticket (note) VALUES (…) RETURNING id``;
2. a transaction of that INSERT after an UPDATE by key of another row (which, through the router, runs on a
   worker first: before key drawing the INSERT was refused there);
3. a transaction of two such INSERTs (an ORM's two creates in one ``atomic()``): through the router, the
   first statement draws its key and the transaction runs on the workers.

Prints the median tps of each side and the ratios to the single server; writes a JSON report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from router_relay import arguments, cluster_pair, scratch, teardown, tps, write_report

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import read_status, start_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

SETUP = "CREATE TABLE ticket (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)"
SEED = "INSERT INTO ticket (note) SELECT 'seed' FROM generate_series(1, 1000)"
SCRIPTS = {
    "autocommit": "INSERT INTO ticket (note) VALUES ('made by pgbench') RETURNING id;\n",
    "after_update": "\\set id random(1, 1000)\nBEGIN;\nUPDATE ticket SET note = 'touched' WHERE id = :id;\n"
                    "INSERT INTO ticket (note) VALUES ('made by pgbench') RETURNING id;\nCOMMIT;\n",
    "insert_first": "BEGIN;\nINSERT INTO ticket (note) VALUES ('parent') RETURNING id;\n"
                    "INSERT INTO ticket (note) VALUES ('child') RETURNING id;\nCOMMIT;\n",
}


def main() -> None:
    args = arguments(__doc__, "router_inserts.json")
    base = scratch("pgfleet-inserts-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                with Fleet(local.endpoint("coord"), local) as side:
                    side.conn().execute(SETUP)
                    side.conn().execute(SEED)
            fleet.distribute(DistributeSpec(QualifiedName("public", "ticket"), "id", HashSpec(8)))
        proc, _ = start_background(fleet_local, route=True)
        with tempfile.TemporaryDirectory(prefix="pgfleet-inserts-scripts-", dir="/tmp") as tmp:
            Path(tmp).chmod(0o755)
            for case, script in SCRIPTS.items():
                path = Path(tmp) / f"{case}.sql"
                path.write_text(script)
                path.chmod(0o644)
                for clients in (1, 4):
                    results.append(_case(single, fleet_local, proc.port, case, path, clients, args))
        drawn = _keys_drawn(fleet_local)
    finally:
        teardown(single, fleet_local)
    elapsed = round(time.monotonic() - started)
    path = write_report(args.out, "router_inserts.json", {"duration": args.duration, "reps": args.reps,
                                                          "results": results, "keys_drawn": drawn,
                                                          "elapsed_seconds": elapsed})
    print(f"keys drawn by the router: {drawn}; raw results: {path} ({elapsed} s)", file=sys.stderr)


def _case(single: LocalCluster, fleet_local: LocalCluster, router_port: int, case: str, script: Path, clients: int,
          args: argparse.Namespace) -> dict[str, object]:
    duration, reps = args.duration, args.reps
    common = ["-n", "-M", "simple", "-f", str(script), "-c", str(clients), "-j", str(min(clients, 2)),
              "-T", str(duration)]
    sides: dict[str, list[float]] = {"single": [], "coordinator": [], "router": []}
    for _ in range(reps):
        sides["single"].append(tps(single, single.spec.coordinator.port, common))
        sides["coordinator"].append(tps(fleet_local, fleet_local.spec.coordinator.port, common))
        sides["router"].append(tps(fleet_local, router_port, common))
    medians = {k: statistics.median(v) for k, v in sides.items()}
    row = {"case": case, "clients": clients, **{f"{k}_tps": v for k, v in medians.items()},
           "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3),
           "router_ratio": round(medians["router"] / medians["single"], 3), "runs": sides}
    print(f"{case:12} -c {clients}: single {medians['single']:8.0f}  coordinator {medians['coordinator']:8.0f} "
          f"({row['coordinator_ratio']:.3f})  router {medians['router']:8.0f} ({row['router_ratio']:.3f})", flush=True)
    return row


def _keys_drawn(local: LocalCluster) -> int:
    time.sleep(1.2)  # the status files are written every second
    status = read_status(local)
    return status.counters.get("keys_drawn", 0) if status else 0

if __name__ == "__main__":
    main()
