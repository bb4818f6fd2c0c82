"""One cluster-wide consistent point: a named restore point on every node, created while no transaction
that commits on several nodes is between its nodes' commits.

Multi-node commits are of three kinds, and each takes a lock that conflicts with what the backup holds:
- writes to distributed tables through the coordinator (postgres_fdw commits each worker, then the
  coordinator commits) hold ROW EXCLUSIVE on the table's partitioned parent until the coordinator's commit;
- reference-table writes and DDL hold ROW EXCLUSIVE (or stronger) on the table, and ``flush_queue()``,
  which prepares and commits them on the workers, takes ROW EXCLUSIVE on ``pgfleet.commit_decisions``
  before it sends anything;
- the router's two-phase commits insert their decision into ``pgfleet.commit_decisions``.
So the backup locks every distributed and reference table and then ``pgfleet.commit_decisions`` IN EXCLUSIVE
MODE (reads go on, writers wait), creates the restore points, and commits. The lock is taken with a short
``lock_timeout`` and retried, so a long transaction never makes writers queue behind the backup for long.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import ExecuteError
from ..execute import describe_error
from ..execute.connect import Conn

ATTEMPT_LOCK_TIMEOUT = "50ms"  # how long writers may queue behind one attempt to lock

# One round trip: every distributed and reference table by oid (a renamed one too), then the decisions
# (in the order writers take them: a table, then flush_queue's ROW EXCLUSIVE on the decisions).
LOCK_ALL = """
DO $$
DECLARE
    r regclass;
BEGIN
    FOR r IN SELECT t.relid::regclass FROM pgfleet.tables t JOIN pg_class c ON c.oid = t.relid ORDER BY t.relid LOOP
        EXECUTE format('LOCK TABLE ONLY %s IN EXCLUSIVE MODE', r);
    END LOOP;
    LOCK TABLE pgfleet.commit_decisions IN EXCLUSIVE MODE;
END $$"""


@dataclass(frozen=True)
class ConsistentPoint:
    name: str
    lsns: tuple[tuple[str, str], ...]  # (node, LSN just after its restore point record)
    held_ms: float  # how long commits were held (locks held)
    waited_ms: float  # how long taking the locks took (in-flight writers finishing, retries)
    attempts: int


def create_consistent_point(coordinator: Conn, workers: Mapping[str, Conn], name: str, *,
                            coordinator_name: str = "coord", lock_wait: float = 30.0) -> ConsistentPoint:
    """Create restore point ``name`` on the coordinator and every worker while commits are held; the
    connections must be autocommit. Raises ExecuteError when the locks cannot be had within ``lock_wait`` s."""
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        coordinator.execute("BEGIN")
        try:
            coordinator.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(ATTEMPT_LOCK_TIMEOUT)))
            coordinator.execute(LOCK_ALL)
            locked = time.monotonic()
        except psycopg.errors.LockNotAvailable:
            coordinator.execute("ROLLBACK")
            if time.monotonic() - started > lock_wait:
                raise ExecuteError(f"the backup could not hold commits for its restore point within {lock_wait:.0f} s: "
                                   f"a transaction keeps writing ({blockers(coordinator)})",
                                   node=coordinator_name,
                                   hint="end long write transactions (see pg_stat_activity) and back up again") from None
            time.sleep(0.05)
            continue
        except BaseException:
            coordinator.execute("ROLLBACK")
            raise
        try:
            lsns = [(node, _restore_point(conn, name, node)) for node, conn in workers.items()]
            lsns.insert(0, (coordinator_name, _restore_point(coordinator, name, coordinator_name)))
        finally:
            coordinator.execute("COMMIT")  # releases the locks; on failure the point is simply not used
            released = time.monotonic()
        return ConsistentPoint(name=name, lsns=tuple(lsns), held_ms=(released - locked) * 1000,
                               waited_ms=(locked - started) * 1000, attempts=attempts)


def _restore_point(conn: Conn, name: str, node: str) -> str:
    try:
        row = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()
    except psycopg.Error as exc:
        raise ExecuteError(f"creating restore point {name} failed: {describe_error(exc)}", node=node) from None
    assert row is not None
    return str(row[0])


def blockers(conn: Conn) -> str:
    """The sessions holding locks on pgfleet's tables, for the error message."""
    rows = conn.execute(
        "SELECT DISTINCT a.pid, a.usename, a.state, now() - a.xact_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.granted AND l.mode = 'RowExclusiveLock' "
        "AND l.relation IN (SELECT relid FROM pgfleet.tables UNION ALL "
        "                   SELECT 'pgfleet.commit_decisions'::regclass) AND a.pid <> pg_backend_pid() "
        "ORDER BY 4 DESC LIMIT 3").fetchall()
    return ", ".join(f"pid {pid} ({user}, {state}, in its transaction for {age})" for pid, user, state, age in rows) \
        or "no session holds them now"
