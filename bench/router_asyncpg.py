"""asyncpg through the routing router vs a single server and vs the coordinator (postgres_fdw), in the same
run, with asyncpg as the client on every side (its statements are prepared with Parse/Describe/Flush and
run with binary results).

    .venv/bin/python bench/router_asyncpg.py [--duration 5] [--reps 3] [--scale 10] [--clients 4]
                                             [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where pgbench_accounts is hash-distributed by aid over 8 shards (pgbench -i data); the router
runs with ``--route`` in its own process. Workloads, each statement with ``$n`` values:

- ``point``: ``SELECT abalance FROM pgbench_accounts WHERE aid = $1`` (one shard);
- ``aggregate``: ``SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE bid = $1`` (every shard);
- ``transaction``: BEGIN; UPDATE one account by aid; SELECT it; COMMIT (one shard, in a transaction).

``--clients`` connections run concurrently in one asyncio loop (uvloop when installed) for ``--duration``
seconds; rate = statements (transactions) per second; ratio = side's rate / the single server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from router_relay import cluster_pair, pgbench_pair, scratch

from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import read_status, start_background, stop_background

WORKLOADS = ("point", "aggregate", "transaction")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5, help="seconds per run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per case")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale of the data")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default="bench/results")
    return parser.parse_args()


async def one_client(conn: Any, workload: str, scale: int, until: float) -> int:
    done = 0
    accounts = scale * 100_000
    while time.monotonic() < until:
        if workload == "point":
            await conn.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = $1", random.randint(1, accounts))
        elif workload == "aggregate":
            await conn.fetchrow("SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE bid = $1",
                                random.randint(1, scale))
        else:
            aid = random.randint(1, accounts)
            async with conn.transaction():
                await conn.execute("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
                                   random.randint(-5000, 5000), aid)
                await conn.fetchval("SELECT abalance FROM pgbench_accounts WHERE aid = $1", aid)
        done += 1
    return done


async def rate(local: LocalCluster, port: int, workload: str, args: argparse.Namespace) -> float:
    conns = [await asyncpg.connect(host="127.0.0.1", port=port, user=local.spec.superuser,
                                   password=local.spec.coordinator.password, database=local.spec.dbname)
             for _ in range(args.clients)]
    try:
        for conn in conns:  # warm: statements prepared, connections opened on the router's side
            await one_client(conn, workload, args.scale, time.monotonic() + 0.2)
        started = time.monotonic()
        counts = await asyncio.gather(*(one_client(c, workload, args.scale, started + args.duration) for c in conns))
        return sum(counts) / (time.monotonic() - started)
    finally:
        for conn in conns:
            await conn.close()


def main() -> None:
    args = arguments()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    base = scratch("pgfleet-asyncpg-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    try:
        pgbench_pair(single, fleet_local, args.scale)
        proc, _ = start_background(fleet_local, route=True, processes=1)
        for workload in WORKLOADS:
            routed_before = _routed(fleet_local)
            sides: dict[str, list[float]] = {"single": [], "coordinator": [], "router": []}
            for _ in range(args.reps):
                sides["single"].append(asyncio.run(rate(single, single.spec.coordinator.port, workload, args)))
                sides["coordinator"].append(asyncio.run(rate(fleet_local, fleet_local.spec.coordinator.port, workload,
                                                             args)))
                sides["router"].append(asyncio.run(rate(fleet_local, proc.port, workload, args)))
            medians = {k: statistics.median(v) for k, v in sides.items()}
            routed_share = (_routed(fleet_local) - routed_before) / max(1.0, sum(sides["router"]) * args.duration
                                                                       * (2 if workload == "transaction" else 1))
            row = {"workload": workload, **{f"{k}_per_s": round(v, 1) for k, v in medians.items()},
                   "routed_share": round(routed_share, 2),
                   "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3),
                   "router_ratio": round(medians["router"] / medians["single"], 3), "runs": sides}
            results.append(row)
            print(f"asyncpg {workload:11} x{args.clients}: single {medians['single']:8.0f}/s  coordinator "
                  f"{medians['coordinator']:8.0f}/s ({row['coordinator_ratio']:.3f})  router {medians['router']:8.0f}/s "
                  f"({row['router_ratio']:.3f}), share of statements routed {routed_share:.2f}", flush=True)
        routed = _routed(fleet_local)
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"duration": args.duration, "reps": args.reps, "scale": args.scale, "clients": args.clients,
              "results": results, "statements_routed": routed, "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_asyncpg.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"statements routed: {routed}; raw results: {out / 'router_asyncpg.json'} ({report['elapsed_seconds']} s)",
          file=sys.stderr)


def _routed(local: LocalCluster) -> int:
    time.sleep(1.2)  # the status file is written every second
    status = read_status(local)
    return status.counters.get("routed", 0) if status else 0


if __name__ == "__main__":
    main()
