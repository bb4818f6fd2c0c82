"""What planning a new statement text costs through the router, against the coordinator, in the same run:
pgbench (`-M simple -c 1 -t 100`, median latency of 3 runs) of ``SELECT count(*) FROM tN WHERE v > :x``
with ``\\set x random(1, 1000000)``, so that every statement is a text the router has not seen, on
1000-row tables hashed over 8 and 128 shards (coordinator + 2 workers, the router with ``--route``).

    .venv/bin/python bench/router_plan_cost.py
"""

from __future__ import annotations

import re
import shutil

from router_copy import psql
from router_relay import pgbench, scratch

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import start_background, stop_background
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

SHARDS = (8, 128)


def main() -> None:
    base = scratch("pgfleet-plancost-")
    local = LocalCluster.create(base / "fleet", workers=2, fast=True)
    try:
        with Fleet(local.endpoint("coord"), local) as fleet:
            fleet.register_local_workers()
            for n in SHARDS:
                psql(local, local.spec.coordinator.port, f"CREATE TABLE t{n} (id bigint PRIMARY KEY, v int); "
                     f"INSERT INTO t{n} SELECT g, g FROM generate_series(1, 1000) g")
                fleet.distribute(DistributeSpec(QualifiedName("public", f"t{n}"), "id", HashSpec(n)))
        router, _ = start_background(local, route=True, processes=1)
        for n in SHARDS:
            script = base / f"t{n}.sql"
            script.write_text(f"\\set x random(1, 1000000)\nSELECT count(*) FROM t{n} WHERE v > :x;\n")
            script.chmod(0o644)
            for side, port in (("coordinator", local.spec.coordinator.port), ("router", router.port)):
                runs = []
                for _ in range(3):
                    out = pgbench(local, port, ["-n", "-M", "simple", "-c", "1", "-t", "100", "-f", str(script)])
                    found = re.search(r"latency average = ([\d.]+) ms", out)
                    assert found is not None, out[-300:]
                    runs.append(float(found.group(1)))
                print(f"{n:4} shards, a new text each time, {side:11}: {sorted(runs)[1]:.2f} ms", flush=True)
    finally:
        stop_background(local)
        local.destroy()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
