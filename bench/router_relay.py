"""The router's relay overhead: pgbench -S (select-only) straight to a PostgreSQL server vs through the
pgfleet router in front of it, in the same run, interleaved, 1 and 4 clients, simple and prepared.

    .venv/bin/python bench/router_relay.py [--duration 5] [--reps 3] [--scale 10] [--out bench/results]

It creates a throw-away local cluster (one coordinator, no workers, fast settings) under /tmp, runs
``pgbench -i`` there, starts the router as its own process (``pgfleet router start``) and prints the
median tps of each side and the ratio router / direct. The router relays every statement to that
same server here, so the ratio is the cost of the relay alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.proc import run
from pgfleet.router.process import start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

CASES = [(1, "simple"), (4, "simple"), (1, "prepared"), (4, "prepared")]


def pgbench(local: LocalCluster, port: int, args: list[str]) -> str:
    argv = [local.binaries.path("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", local.spec.superuser, *args,
            local.spec.dbname]
    return run(argv, env={"PGPASSWORD": local.spec.coordinator.password}, timeout=600, what="pgbench").stdout


def tps(local: LocalCluster, port: int, args: list[str]) -> float:
    out = pgbench(local, port, args)
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"no tps in pgbench output: {out[-300:]}")
    return float(match.group(1))


def reset_peak_memory(pid: int) -> None:
    """Start the process's peak resident size (VmHWM) again from its current size (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_memory_mb(pid: int) -> float | None:
    """The process's peak resident size since the last reset, in MB (None where /proc does not tell)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def cluster_pair(base: Path) -> tuple[LocalCluster, LocalCluster]:
    """A throw-away single server (the baseline) and a fleet (coordinator + 2 workers) under ``base``."""
    single = LocalCluster.create(base / "single", workers=0, fast=True)
    return single, LocalCluster.create(base / "fleet", workers=2, fast=True)


def pgbench_pair(single: LocalCluster, fleet_local: LocalCluster, scale: int) -> list[str]:
    """``pgbench -i`` at ``scale`` on both sides, then on the fleet pgbench_accounts hash-distributed by aid
    over 8 shards and everything analysed; the fleet's worker names."""
    with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
        fleet.register_local_workers()
        for local in (single, fleet_local):
            pgbench(local, local.spec.coordinator.port, ["-i", "-q", "-s", str(scale)])
        fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(8)))
        fleet.conn().execute("VACUUM ANALYZE")
        return sorted(node.name for node in fleet.topology().workers)


def arguments(description: str | None, report: str,
              extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per case")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale")
    parser.add_argument("--out", default="bench/results", help=f"directory for {report}")
    parser.add_argument("--modes", default="simple,extended,prepared", help="pgbench -M modes to run, comma-separated")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def teardown(single: LocalCluster, fleet_local: LocalCluster) -> None:
    """Stop the fleet's router and remove both clusters of :func:`cluster_pair`."""
    stop_background(fleet_local)
    fleet_local.destroy()
    single.destroy()


def write_report(out_dir: str, name: str, report: dict[str, object]) -> Path:
    """``report`` as JSON in ``out_dir``/``name``; the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def scratch(prefix: str) -> Path:
    """A directory under /tmp the server account can traverse."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    return base


def main() -> None:
    args = arguments(__doc__, "router_relay.json")
    base = scratch("pgfleet-relay-")
    started = time.monotonic()
    local = LocalCluster.create(base / "cluster", workers=0, fast=True)
    try:
        direct = local.spec.coordinator.port
        pgbench(local, direct, ["-i", "-q", "-s", str(args.scale)])
        proc, _ = start_background(local)
        results = []
        for clients, mode in [case for case in CASES if case[1] in args.modes.split(",")]:
            common = ["-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(args.duration)]
            sides: dict[str, list[float]] = {"direct": [], "router": []}
            for _ in range(args.reps):
                sides["direct"].append(tps(local, direct, common))
                sides["router"].append(tps(local, proc.port, common))
            row = {"clients": clients, "mode": mode, "direct_tps": statistics.median(sides["direct"]),
                   "router_tps": statistics.median(sides["router"]), "runs": sides}
            row["ratio"] = round(row["router_tps"] / row["direct_tps"], 3)  # type: ignore[operator]
            results.append(row)
            print(f"pgbench -S -M {mode:8} -c {clients}: direct {row['direct_tps']:9.0f} tps, "
                  f"router {row['router_tps']:9.0f} tps, ratio {row['ratio']:.3f}", flush=True)
        stop_background(local)
    finally:
        stop_background(local)
        local.destroy()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"duration": args.duration, "reps": args.reps, "scale": args.scale, "results": results,
              "elapsed_seconds": round(time.monotonic() - started)}
    (out / "router_relay.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"raw results: {out / 'router_relay.json'} ({report['elapsed_seconds']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
