"""Select-only through the routing router vs a single server and vs the coordinator (postgres_fdw), in
the same run, with pgbench as the client on every side.

    .venv/bin/python bench/router_routed.py [--duration 5] [--reps 3] [--scale 10] [--out bench/results]
                                            [--modes simple,extended,prepared]

Two throw-away local clusters under /tmp: a single server (the baseline) and a fleet (coordinator + 2
workers) where pgbench_accounts is hash-distributed by aid over 8 shards; the router runs with
``--route`` in its own process(es): 1 process for every case, then 2 (``--processes 2``) for the
4-client simple case. Every mode is routed to the workers: ``-M simple`` statements by their text,
``-M extended`` and ``-M prepared`` (the extended protocol) by their Bind's values. Router CPU per
statement is the CPU time of the router processes during the router's pgbench runs over the
transactions they made. ``--modes`` runs only the cases of these modes.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from router_relay import arguments, cluster_pair, pgbench_pair, scratch, tps

from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import read_status, start_background, stop_background

# (router processes, clients, mode)
CASES = [(1, 1, "simple"), (1, 4, "simple"), (1, 4, "prepared"), (1, 4, "extended"), (2, 4, "simple")]


def cpu_seconds(pids: tuple[int, ...]) -> float:
    """User + system CPU time of these processes so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    args = arguments(__doc__, "router_routed.json")

    base = scratch("pgfleet-routed-")
    started = time.monotonic()
    single, fleet_local = cluster_pair(base)
    results: list[dict[str, object]] = []
    try:
        pgbench_pair(single, fleet_local, args.scale)
        routed, running = 0, 0
        for processes, clients, mode in [case for case in CASES if case[2] in args.modes.split(",")]:
            if processes != running:  # (re)start the router with this many processes
                if running:
                    routed += _routed(fleet_local)
                    stop_background(fleet_local)
                proc, _ = start_background(fleet_local, route=True, processes=processes)
                running = processes
            common = ["-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(args.duration)]
            sides: dict[str, list[float]] = {"single": [], "coordinator": [], "router": []}
            cpu = transactions = 0.0
            for _ in range(args.reps):
                sides["single"].append(tps(single, single.spec.coordinator.port, common))
                sides["coordinator"].append(tps(fleet_local, fleet_local.spec.coordinator.port, common))
                before = cpu_seconds(proc.pids)
                sides["router"].append(tps(fleet_local, proc.port, common))
                cpu += cpu_seconds(proc.pids) - before
                transactions += sides["router"][-1] * args.duration
            medians = {k: statistics.median(v) for k, v in sides.items()}
            row = {"processes": processes, "clients": clients, "mode": mode,
                   **{f"{k}_tps": v for k, v in medians.items()},
                   "coordinator_ratio": round(medians["coordinator"] / medians["single"], 3),
                   "router_ratio": round(medians["router"] / medians["single"], 3),
                   "router_cpu_us_per_statement": round(cpu / transactions * 1e6, 1), "runs": sides}
            results.append(row)
            print(f"pgbench -S -M {mode:8} -c {clients} (router x{processes}): single {medians['single']:8.0f}  "
                  f"coordinator {medians['coordinator']:8.0f} ({row['coordinator_ratio']:.3f})  router "
                  f"{medians['router']:8.0f} ({row['router_ratio']:.3f}), router CPU "
                  f"{row['router_cpu_us_per_statement']} us/statement", flush=True)
        routed += _routed(fleet_local)
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


def _routed(local: LocalCluster) -> int:
    time.sleep(1.2)  # the status files are written every second
    status = read_status(local)
    return status.counters.get("routed", 0) if status else 0


if __name__ == "__main__":
    main()
