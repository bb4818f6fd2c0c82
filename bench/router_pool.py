"""Select-only (simple protocol) through the routing router vs one plain server, at 10, 100 and 1000
clients, with the worker backends the router's pools opened: the pools bound them, whatever the clients.

    .venv/bin/python bench/router_pool.py [--duration 5] [--reps 2] [--scale 10] [--clients 10,100,1000]
                                          [--pool-size N] [--processes 1] [--out bench/results]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where pgbench_accounts is hash-distributed by aid over 8 shards; both get max_connections high
enough for the most clients. The router runs with ``--route`` (``--processes``, ``--pool-size``; the
default pool is two connections per core per worker and process). A sampler counts, every 50 ms, the
router's backends on each worker (pg_stat_activity, application_name 'pgfleet router') and the
coordinator's client backends: authentication is relayed to the coordinator, so every client still
has its own coordinator backend (idle while its statements are routed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Self

from router_relay import cluster_pair, pgbench_pair, scratch, tps

from pgfleet.cluster.local import LocalCluster
from pgfleet.execute.connect import connect
from pgfleet.router.process import read_status, start_background, stop_background

ROUTER_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfleet router'"
CLIENT_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5,
                        help="seconds per pgbench run, plus one per 40 clients for connecting them")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions per case")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale")
    parser.add_argument("--clients", default="10,100,1000", help="client counts, comma-separated")
    parser.add_argument("--pool-size", type=int, default=None, help="router pool size (default: 2 per core)")
    parser.add_argument("--processes", type=int, default=1, help="router processes")
    parser.add_argument("--out", default="bench/results", help="directory for router_pool.json")
    return parser.parse_args()


def allow_connections(local: LocalCluster, count: int) -> None:
    with connect(local.endpoint("coord"), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET max_connections = {int(count)}")
    local.stop()
    local.start()


class Sampler:
    """The most router backends on each worker and client backends on the coordinator seen while it runs."""

    def __init__(self, local: LocalCluster, workers: list[str]) -> None:
        self.local, self.workers = local, workers
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        conns = {name: connect(self.local.endpoint(name), autocommit=True) for name in [*self.workers, "coord"]}
        try:
            while not self._stop.is_set():
                for name, conn in conns.items():
                    row = conn.execute(CLIENT_BACKENDS if name == "coord" else ROUTER_BACKENDS).fetchone()
                    self.peak[name] = max(self.peak.get(name, 0), int(row[0]) if row else 0)
                time.sleep(0.05)
        finally:
            for conn in conns.values():
                conn.close()


def main() -> None:
    args = arguments()
    counts = [int(c) for c in args.clients.split(",")]
    base = scratch("pgfleet-pool-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    try:
        workers = pgbench_pair(single, fleet_local, args.scale)
        for local in (single, fleet_local):
            allow_connections(local, max(counts) + 100)
        proc, _ = start_background(fleet_local, route=True, processes=args.processes, pool_size=args.pool_size)
        for clients in counts:
            # pgbench's -T includes connecting every client (SCRAM, one by one): time for that on top
            common = ["-n", "-S", "-M", "simple", "-c", str(clients), "-j", "2", "-T", str(args.duration + clients // 40)]
            sides: dict[str, list[float]] = {"single": [], "router": []}
            peak: dict[str, int] = {}
            for _ in range(args.reps):
                sides["single"].append(tps(single, single.spec.coordinator.port, common))
                with Sampler(fleet_local, workers) as sampler:
                    sides["router"].append(tps(fleet_local, proc.port, common))
                peak = {k: max(v, peak.get(k, 0)) for k, v in sampler.peak.items()}
            medians = {k: statistics.median(v) for k, v in sides.items()}
            row = {"clients": clients, **{f"{k}_tps": v for k, v in medians.items()},
                   "ratio": round(medians["router"] / medians["single"], 3),
                   "worker_backends_peak": {w: peak.get(w, 0) for w in workers},
                   "coordinator_client_backends_peak": peak.get("coord", 0), "runs": sides}
            results.append(row)
            print(f"pgbench -S -M simple -c {clients:4}: single {medians['single']:8.0f}  router "
                  f"{medians['router']:8.0f} tps, ratio {row['ratio']:.3f}; router backends per worker "
                  f"{row['worker_backends_peak']}, coordinator client backends {row['coordinator_client_backends_peak']}",
                  flush=True)
        time.sleep(1.2)  # the status files are written every second
        status = read_status(fleet_local)
        pools = status.pools if status else {}
        routed = status.counters.get("routed", 0) if status else 0
    finally:
        stop_background(fleet_local)
        fleet_local.destroy()
        single.destroy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"duration": args.duration, "reps": args.reps, "scale": args.scale, "processes": args.processes,
              "pool_size": args.pool_size, "pools": pools, "statements_routed": routed, "results": results,
              "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_pool.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"pools at the end: {pools}; statements routed: {routed}; raw results: {out / 'router_pool.json'} "
          f"({report['elapsed_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
