"""pgbench TPC-B-like (read-write; -M simple, extended and/or prepared) through the routing router vs a
single server and vs the coordinator (postgres_fdw), in the same run, with pgbench as the client on every side.

    .venv/bin/python bench/router_tpcb.py [--duration 20] [--reps 1] [--scale 10] [--modes simple,prepared]
                                          [--reference] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where all four pgbench tables are hash-distributed (accounts and history by aid, branches by
bid, tellers by tid, 8 shards). Through the router each transaction runs on the workers: on one worker
with a plain COMMIT, or on two with two-phase commit; with -M extended / prepared BEGIN, the statements
and END come with the extended protocol (prepared statements for -M prepared). Reported per mode: tps,
ratio to the single server, and the failed transactions of each side (the coordinator runs worker
transactions in REPEATABLE READ).

With --reference, pgbench_branches and pgbench_tellers are reference tables instead (a copy on every
node), as in issue 9's second TPC-B row; accounts and history stay hash-distributed by aid. Through the
router their writes join the transaction, and the router writes every copy itself (router/refcopies.py);
--trigger-copies gives both tables a do-nothing trigger of their own, which leaves the copies to pgfleet's
trigger at COMMIT (the path of any write on the coordinator), for comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from psycopg import sql
from router_relay import arguments, cluster_pair, pgbench, scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.pgbench import pgbench_numbers
from pgfleet.router.process import read_status, start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

TABLES = (("accounts", "aid"), ("history", "aid"), ("branches", "bid"), ("tellers", "tid"))
REFERENCE = ("branches", "tellers")
COUNTERS = ("routed", "pinned_sessions", "worker_transactions", "two_phase_commits", "coordinator_parts",
            "reference_copies_written", "coordinator_transactions", "recovered_commits", "recovered_aborts", "in_doubt")


def main() -> None:
    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--reference", action="store_true", help="branches and tellers as reference tables")
        parser.add_argument("--trigger-copies", action="store_true",
                            help="with --reference: a trigger of their own, so their copies are written at COMMIT")

    args = arguments(__doc__, "router_tpcb.json", extra)
    base = scratch("pgfleet-tpcb-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    sides = ("single", "coordinator", "router")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {mode: {side: [] for side in sides} for mode in modes}
    try:
        with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
            fleet.register_local_workers()
            for local in (single, fleet_local):
                pgbench(local, local.spec.coordinator.port, ["-i", "-q", "-s", str(args.scale)])
            for table, key in TABLES:
                name = QualifiedName("public", f"pgbench_{table}")
                if args.reference and table in REFERENCE:
                    fleet.reference(ReferenceSpec(name))
                    if args.trigger_copies:
                        fleet.conn().execute(sql.SQL(
                            "CREATE OR REPLACE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE plpgsql AS "
                            "$$ BEGIN RETURN NULL; END $$; CREATE TRIGGER bench_noop AFTER UPDATE ON {} "
                            "FOR EACH STATEMENT EXECUTE FUNCTION public.bench_noop()").format(
                                sql.Identifier(name.schema or "public", name.name)))
                else:
                    fleet.distribute(DistributeSpec(name, key, HashSpec(8)))
            fleet.conn().execute("VACUUM ANALYZE")
        proc, _ = start_background(fleet_local, route=True)
        for _ in range(args.reps):
            for mode in modes:
                common = ["-n", "-M", mode, "-c", "4", "-j", "2", "-T", str(args.duration)]
                for side, local, port in (("single", single, single.spec.coordinator.port),
                                          ("coordinator", fleet_local, fleet_local.spec.coordinator.port),
                                          ("router", fleet_local, proc.port)):
                    numbers = pgbench_numbers(pgbench(local, port, common))
                    runs[mode][side].append(numbers)
                    print(f"-M {mode:9} {side:12} tps {numbers['tps']:8.1f}  failed {int(numbers.get('failed', 0))}",
                          flush=True)
        time.sleep(1.2)  # the status file is written every second
        status = read_status(fleet_local)
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    by_mode = {}
    for mode in modes:
        medians = {side: statistics.median(n["tps"] for n in numbers) for side, numbers in runs[mode].items()}
        failed = {side: sum(int(n.get("failed", 0)) for n in numbers) for side, numbers in runs[mode].items()}
        by_mode[mode] = {"tps": medians, "failed": failed,
                         "router_ratio": round(medians["router"] / medians["single"], 3),
                         "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3)}
        print(f"TPC-B -M {mode} -c 4: single {medians['single']:.0f} tps, coordinator {medians['coordinator']:.0f} "
              f"({by_mode[mode]['coordinator_ratio']}, {failed['coordinator']} failed), router {medians['router']:.0f} "
              f"({by_mode[mode]['router_ratio']}, {failed['router']} failed)", flush=True)
    report = {"reference": args.reference, "trigger_copies": args.trigger_copies,
              "duration": args.duration, "reps": args.reps, "scale": args.scale, "clients": 4, "modes": by_mode,
              "router_status": None if status is None else {k: status.counters.get(k, 0) for k in COUNTERS},
              "runs": runs, "elapsed_seconds": round(time.monotonic() - started)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "router_tpcb.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {out / 'router_tpcb.json'}; router counters: {report['router_status']}", file=sys.stderr)


if __name__ == "__main__":
    main()
