"""Dropping a replication slot on a server once its last user has let go of it."""

from __future__ import annotations

import time

from .connect import Conn


def drop_slot(conn: Conn, slot: str, *, wait: float = 10.0) -> bool:
    """Drop ``slot`` if it exists; True when it is gone. A slot whose client (pg_receivewal, pg_basebackup,
    a standby) has just exited stays active until its walsender notices, a moment later: wait up to ``wait``
    seconds for that instead of failing (an undropped slot keeps every later WAL segment on the server)."""
    deadline = time.monotonic() + wait
    while True:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
        if row is None:
            return True
        if not row[0]:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (slot,))
            if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone() is None:
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
