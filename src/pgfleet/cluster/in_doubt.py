"""Settle the prepared pgfleet transactions left on workers, by what the coordinator decided (synchronous).

Two kinds of gid:
- ``pgfleet_xact_<xid>_<node>``: prepared by ``flush_queue()`` (reference writes, DDL) inside coordinator
  transaction <xid>; its fate is that transaction's: ``pg_xact_status`` on the coordinator (committed:
  COMMIT PREPARED; aborted, or too old to know: ROLLBACK PREPARED; in progress: left alone).
- ``pgfleet_rt_…``: the router's two-phase commits, decided by the row of ``pgfleet.commit_decisions``
  (catalog.sql describes the protocol): settled by one pass of the router's recovery
  (``router.recovery.recover_with``) that does not wait for young transactions.
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
from ..router import recovery

log = logging.getLogger(__name__)

FLUSH_GID = re.compile(r"^pgfleet_xact_(\d+)_")


@dataclass(frozen=True)
class Settled:
    node: str
    gid: str
    outcome: str  # commit | abort | left (still in progress on the coordinator)


def flush_gids(conn: Conn) -> list[str]:
    rows = conn.execute("SELECT gid FROM pg_prepared_xacts WHERE database = current_database() "
                        "AND gid LIKE 'pgfleet\\_xact\\_%' ORDER BY prepared").fetchall()
    return [str(r[0]) for r in rows]


def flush_outcome(coordinator: Conn, gid: str) -> str:
    """The outcome of a flush_queue() gid: its coordinator transaction's (commit, abort, or left while it runs)."""
    match = FLUSH_GID.match(gid)
    assert match is not None
    row = coordinator.execute("SELECT pg_xact_status(%s::xid8)", (match.group(1),)).fetchone()
    status = row[0] if row else None
    return {"committed": "commit", "in progress": "left"}.get(str(status), "abort")


def settle_prepared(coordinator: Conn, workers: Mapping[str, Conn]) -> list[Settled]:
    """Commit or roll back every prepared pgfleet transaction on ``workers`` (autocommit connections) by the
    coordinator's decision; then delete the decision rows no worker needs any more. Returns what was done.
    The router's gids are settled by the router's own recovery pass, with no waiting: nothing else runs."""
    done: list[Settled] = []
    for node, conn in workers.items():
        for gid in flush_gids(conn):
            outcome = flush_outcome(coordinator, gid)
            if outcome != "left":
                verb = "COMMIT PREPARED" if outcome == "commit" else "ROLLBACK PREPARED"
                try:
                    conn.execute(sql.SQL(verb + " {}").format(sql.Literal(gid)))  # verb: one of two constants
                except psycopg.Error as exc:
                    raise ExecuteError(f"{verb} {gid} failed: {describe_error(exc)}", node=node) from None
            log.info("node %s: prepared transaction %s: %s", node, gid, outcome)
            done.append(Settled(node, gid, outcome))
    report = recovery.recover_with(coordinator, workers, complete=True, min_age=0.0, keep_abort=0.0)
    # a second pass deletes the decision rows of what the first finished (a pass deletes rows of gids it
    # did not see prepared)
    report = recovery.recover_with(coordinator, workers, complete=True, min_age=0.0, keep_abort=0.0, report=report)
    if report.errors:
        raise ExecuteError("settling the router's prepared transactions failed: " + "; ".join(report.errors))
    done += [Settled(node, gid, outcome) for node, gid, outcome in report.done]
    return done
