"""Running pgbench against a node of a local cluster, and reading its summary."""

from __future__ import annotations

import os
import re
import tempfile

from .cluster.local import LocalCluster
from .proc import run


def run_pgbench(local: LocalCluster, node: str, args: list[str], script: str | None = None,
                port: int | None = None) -> dict[str, float]:
    """Run pgbench against ``node`` of ``local`` (password in the environment, never in argv); ``port``: at
    that port instead (a router in front of the node), as the node's user."""
    ep = local.endpoint(node)
    argv = [local.binaries.path("pgbench"), "-h", ep.host, "-p", str(port or ep.port), "-U", ep.user, *args]
    env = {"PGPASSWORD": ep.password or "", "PGDATABASE": ep.dbname}
    if script is not None:
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
            handle.write(script)
        argv += ["-f", handle.name]
    try:
        out = run(argv, env=env, timeout=600, what="pgbench").stdout
    finally:
        if script is not None:
            os.unlink(handle.name)
    return pgbench_numbers(out)


def pgbench_numbers(out: str) -> dict[str, float]:
    """tps and average latency (0 when absent), and the transactions processed and failed when reported."""
    patterns = {"tps": r"tps = ([\d.]+)", "latency_ms": r"latency average = ([\d.]+) ms",
                "transactions": r"number of transactions actually processed: (\d+)",
                "failed": r"number of failed transactions: (\d+)"}
    numbers = {"tps": 0.0, "latency_ms": 0.0}
    for name, pattern in patterns.items():
        if m := re.search(pattern, out):
            numbers[name] = float(m.group(1))
    return numbers
