"""Fencing: making sure a member accepts no more writes."""

from __future__ import annotations

from ..cluster.local import LocalCluster
from ..errors import PgfleetError


def fence(local: LocalCluster, member: str) -> None:
    """Make sure ``member`` accepts no more writes: stop it (it is a local process), kill it if needed."""
    server = local.server(member)
    try:
        server.stop(mode="immediate", timeout=10)
    except PgfleetError:
        server.kill()
    if server.is_running():
        server.kill()
