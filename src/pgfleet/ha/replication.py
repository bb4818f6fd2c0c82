"""Small replication helpers shared by the HA modules: connections, LSNs, slots, waiting for streaming."""

from __future__ import annotations

import time

from ..cluster.local import LocalCluster
from ..errors import NodeError, PgfleetError
from ..execute.connect import Conn, Endpoint, connect


def connect_to(ep: Endpoint, timeout: int = 2) -> Conn:
    return connect(ep, timeout=timeout)


def lsn_int(text: object) -> int | None:
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def sync_members(local: LocalCluster, group: str) -> list[str]:
    return [m.name for m in local.spec.standbys(group) if m.sync]


def wait_streaming(local: LocalCluster, group: str, member: str, timeout: float = 60) -> None:
    primary = local.endpoint(group)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with connect_to(primary) as conn:
                row = conn.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                                   (member,)).fetchone()
            if row and row[0] == "streaming":
                return
            last = str(row[0]) if row else "not connected"
        except PgfleetError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise NodeError(f"standby {member} is not streaming from {group} after {timeout:.0f} s ({last})", node=member,
                    hint=f"see {local.server(member).logfile}")


def ensure_slot(conn: Conn, slot: str) -> None:
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true) "
                 "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)", (slot, slot))
