"""Backup and restore of a fleet against pg_basebackup of one server holding the same data, same run.

    .venv/bin/python bench/backup_restore.py [--scale 10] [--points 5]

Both sides: pgbench -i -s SCALE; on the fleet (coordinator + 2 workers) pgbench_accounts is
hash-distributed by aid over 8 shards. Timed: `pgfleet backup` (base backups of the 3 nodes, restore
points, WAL) against pg_basebackup -X stream of the single server; `pgfleet restore` (verify, copy,
recover, repoint, restart) against copying the single server's backup and starting it. Then, while
pgbench's simple-update runs through the coordinator (4 clients), --points consistent points are made:
how long commits were held, and how long taking the locks waited.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from pgfleet.cluster.backup import backup
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.restore import restore
from pgfleet.cluster.restore_point import create_consistent_point
from pgfleet.execute.connect import connect
from pgfleet.node.backup_tools import base_backup, tree_size
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.node.recovery import install_copy
from pgfleet.node.server import LocalServer
from pgfleet.pgbench import run_pgbench
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--points", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pgfleet-backupbench-", dir="/tmp") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        single = LocalCluster.create(root / "single", workers=0, fast=True)
        fleet_local = LocalCluster.create(root / "fleet", workers=2, fast=True)
        try:
            with Fleet(fleet_local.endpoint("coord"), fleet_local) as fleet:
                fleet.register_local_workers()
                measure(root, single, fleet_local, fleet, args)
        finally:
            single.destroy()
            fleet_local.destroy()
            if LocalCluster.exists(root / "restored"):
                LocalCluster.load(root / "restored").destroy()


def measure(root: Path, single: LocalCluster, fleet_local: LocalCluster, fleet: Fleet, args: argparse.Namespace) -> None:
    for local in (single, fleet_local):
        run_pgbench(local, "coord", ["-i", "-q", "-s", str(args.scale)])
    fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(8)))
    for local in (single, fleet_local):
        for node in local.spec.nodes:
            with connect(local.endpoint(node.name)) as conn:
                conn.execute("CHECKPOINT")

    started = time.monotonic()
    base_backup(single.binaries, single.endpoint("coord"), root / "single-backup")
    single_backup = time.monotonic() - started
    single_bytes = tree_size(root / "single-backup")

    started = time.monotonic()
    result = backup(fleet, root / "fleet-backup")
    fleet_backup = time.monotonic() - started
    fleet_bytes = sum(n.data_bytes + n.wal_bytes for n in result.manifest.nodes)

    started = time.monotonic()
    port = claim_ports(1, root / "single-restored")[0]
    server = LocalServer(name="single", home=root / "single-restored", port=port, binaries=single.binaries,
                         run_as=single.run_as)
    install_copy(server, root / "single-backup", {})
    server.write_config(fast=True)
    server.start()
    single_restore = time.monotonic() - started
    server.stop(mode="immediate")
    release_ports([port], root / "single-restored")

    started = time.monotonic()
    restore(root / "fleet-backup", root / "restored")
    fleet_restore = time.monotonic() - started

    held, waited = points_under_load(fleet_local, args.points)
    print(f"scale {args.scale}: single server {single_bytes / 2**20:.0f} MB, fleet {fleet_bytes / 2**20:.0f} MB "
          f"(3 nodes, with WAL)")
    print(f"| backup | {single_backup:.1f} s | {fleet_backup:.1f} s | {fleet_backup / single_backup:.2f} |")
    print(f"| restore | {single_restore:.1f} s | {fleet_restore:.1f} s | {fleet_restore / single_restore:.2f} |")
    print(f"commits held (quiet backup): {result.manifest.held_ms:.1f} ms")
    print(f"commits held under pgbench simple-update, 4 clients, {args.points} points: median "
          f"{statistics.median(held):.1f} ms, max {max(held):.1f} ms; lock wait median {statistics.median(waited):.1f} ms, "
          f"max {max(waited):.1f} ms")


def points_under_load(local: LocalCluster, count: int) -> tuple[list[float], list[float]]:
    seconds = 4 + 2 * count
    load = threading.Thread(target=run_pgbench, args=(local, "coord", ["-n", "-N", "-c", "4", "-T", str(seconds)]))
    load.start()
    held, waited = [], []
    try:
        time.sleep(2)
        coord = connect(local.endpoint("coord"))
        workers = {n: connect(local.endpoint(n)) for n in ("w1", "w2")}
        for i in range(count):
            point = create_consistent_point(coord, workers, f"bench_{i}")
            held.append(point.held_ms)
            waited.append(point.waited_ms)
            time.sleep(1)
        for conn in (coord, *workers.values()):
            conn.close()
    finally:
        load.join()
    return held, waited


if __name__ == "__main__":
    main()
