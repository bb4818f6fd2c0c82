"""Settle the prepared pgfleet transactions left on workers, by what the coordinator decided (synchronous).

Two kinds of gid:
- ``pgfleet_xact_<xid>_<node>``: prepared by ``flush_queue()`` (reference writes, DDL) inside coordinator
  transaction <xid>; its fate is that transaction's: ``pg_xact_status`` on the coordinator (committed:
  COMMIT PREPARED; aborted, or too old to know: ROLLBACK PREPARED; in progress: left alone).
- any other ``pgfleet_…`` gid: the router's two-phase commits, decided by the row of
  ``pgfleet.commit_decisions`` (catalog.sql describes the protocol). Outcome 'commit': COMMIT PREPARED.
  No row: insert outcome 'abort' ON CONFLICT DO NOTHING (a decision in flight wins), read the row again
  and act by it. Rows whose gid is then prepared on no worker are deleted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import ExecuteError
from ..execute import describe_error
from ..execute.connect import Conn

log = logging.getLogger(__name__)

FLUSH_GID = re.compile(r"^pgfleet_xact_(\d+)_")


@dataclass(frozen=True)
class Settled:
    node: str
    gid: str
    outcome: str  # commit | abort | left (still in progress on the coordinator)


def prepared_gids(conn: Conn) -> list[str]:
    rows = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                        "AND gid LIKE 'pgfleet\\_%' ORDER BY prepared").fetchall()
    return [str(r[0]) for r in rows]


def decide(coordinator: Conn, gid: str) -> str:
    """The outcome of ``gid``: commit, abort, or left (its coordinator transaction still runs)."""
    match = FLUSH_GID.match(gid)
    if match:
        row = coordinator.execute("SELECT pg_xact_status(%s::xid8)", (match.group(1),)).fetchone()
        status = row[0] if row else None
        return {"committed": "commit", "in progress": "left"}.get(str(status), "abort")
    coordinator.execute("INSERT INTO pgfleet.commit_decisions (gid, outcome) VALUES (%s, 'abort') "
                        "ON CONFLICT (gid) DO NOTHING", (gid,))
    row = coordinator.execute("SELECT outcome FROM pgfleet.commit_decisions WHERE gid = %s", (gid,)).fetchone()
    return str(row[0]) if row else "abort"


def settle_prepared(coordinator: Conn, workers: Mapping[str, Conn]) -> list[Settled]:
    """Commit or roll back every prepared pgfleet transaction on ``workers`` (autocommit connections) by the
    coordinator's decision; then delete the decision rows no worker needs any more. Returns what was done."""
    done: list[Settled] = []
    for node, conn in workers.items():
        for gid in prepared_gids(conn):
            outcome = decide(coordinator, gid)
            if outcome != "left":
                verb = "COMMIT PREPARED" if outcome == "commit" else "ROLLBACK PREPARED"
                try:
                    conn.execute(sql.SQL(verb + " {}").format(sql.Literal(gid)))  # verb: one of two constants
                except psycopg.Error as exc:
                    raise ExecuteError(f"{verb} {gid} failed: {describe_error(exc)}", node=node) from None
            log.info("node %s: prepared transaction %s: %s", node, gid, outcome)
            done.append(Settled(node, gid, outcome))
    still = {gid for conn in workers.values() for gid in prepared_gids(conn)}
    coordinator.execute("DELETE FROM pgfleet.commit_decisions WHERE NOT (gid = ANY (%s))", (sorted(still),))
    return done
