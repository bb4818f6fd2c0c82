"""Fencing: making sure a member accepts no more writes, now and after any restart.

The process is stopped (killed if it does not stop), and its directory is marked (node/fencemark.py):
``pgfleet up`` leaves a fenced member stopped, and a server started by hand comes up read-only. Only a
successful ``pgfleet node rejoin`` lifts the fence.
"""

from __future__ import annotations

from ..cluster.local import LocalCluster
from ..errors import PgfleetError
from ..node.fencemark import FenceMark, mark_fenced


def fence(local: LocalCluster, member: str, reason: str) -> FenceMark:
    """Mark ``member`` fenced, then stop it (immediate shutdown, SIGKILL if that fails)."""
    server = local.server(member)
    mark = mark_fenced(server, reason)  # first: a crash between the two leaves it fenced
    try:
        server.stop(mode="immediate", timeout=10)
    except PgfleetError:
        server.kill()
    if server.is_running():
        server.kill()
    return mark
