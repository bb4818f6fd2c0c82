"""Maintenance locks: one file per group in the cluster directory keeps the monitor and other pgfleet
commands away from a group while its roles change."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from ..cluster.local import LocalCluster
from ..errors import TopologyError

MAINTENANCE_STALE = 300.0  # seconds after which a lock left by a dead process is ignored


@contextlib.contextmanager
def maintenance(local: LocalCluster, group: str, what: str) -> Iterator[None]:
    """Keep the monitor (and other pgfleet commands) away from ``group`` while its roles change."""
    path = local.directory / f"maintenance-{group}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if time.time() - path.stat().st_mtime < MAINTENANCE_STALE:
            raise TopologyError(f"node {group} is busy ({path.read_text().strip() or 'another operation'})",
                                hint="wait for it to finish and try again") from None
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{what} (pid {os.getpid()})\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def under_maintenance(local: LocalCluster, group: str) -> bool:
    path = local.directory / f"maintenance-{group}"
    try:
        return time.time() - path.stat().st_mtime < MAINTENANCE_STALE
    except FileNotFoundError:
        return False
