"""Roles and privileges on the workers (sql/grants.sql has the statements and says why).

The coordinator composes each statement (``pgfleet.role_sync_sql()``, ``pgfleet.privileges_sql()``), so
the CLI, the SQL API and the DDL trigger apply the same text; here it is sent to workers directly: to new
shards when a table is distributed or copied, and to every worker by :func:`sync_roles` (the router calls
it when the coordinator's roles change)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import psycopg

from ..errors import ExecuteError
from ..execute import describe_error
from ..execute.connect import Conn
from ..topology.model import Shard

if TYPE_CHECKING:
    from .fleet import Fleet

log = logging.getLogger(__name__)


def role_sync_sql(coordinator: Conn) -> str:
    row = coordinator.execute("SELECT pgfleet.role_sync_sql()").fetchone()
    assert row is not None
    return str(row[0])


def roles_fingerprint(coordinator: Conn) -> str:
    row = coordinator.execute("SELECT pgfleet.roles_fingerprint()").fetchone()
    assert row is not None
    return str(row[0])


def apply_privileges(coordinator: Conn, workers: dict[str, Conn], shards: Iterable[Shard], source_oid: int) -> None:
    """Copy the coordinator's roles to the shards' workers, then the owner and privileges of table
    ``source_oid`` to each shard table, one transaction per worker."""
    roles = role_sync_sql(coordinator)
    by_node: dict[str, list[str]] = {}
    for shard in shards:
        row = coordinator.execute("SELECT pgfleet.privileges_sql(%s, %s, %s)",
                                  (source_oid, shard.shard_schema, shard.shard_table)).fetchone()
        assert row is not None
        by_node.setdefault(shard.node, []).append(str(row[0]))
    for node, statements in by_node.items():
        conn = workers[node]
        try:
            with conn.transaction():
                conn.execute(roles.encode())
                for statement in statements:
                    conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise ExecuteError(f"copying roles and privileges to the shards failed: {describe_error(exc)}",
                               node=node, hint="check that pgfleet's account on the worker is a superuser") from None


def sync_roles(fleet: Fleet) -> str:
    """Make every worker's roles and memberships the coordinator's, then give the shards of every table
    whose owner or privileges changed unseen (REASSIGN OWNED) the coordinator's (two-phase, at COMMIT);
    return the fingerprint applied."""
    conn = fleet.conn()
    fingerprint = roles_fingerprint(conn)
    roles = role_sync_sql(conn)
    topo = fleet.topology()
    for node in topo.workers:
        try:
            with fleet.worker_conn(node) as wconn:
                wconn.execute(roles.encode())
        except psycopg.Error as exc:
            raise ExecuteError(f"copying roles to worker {node.name} failed: {describe_error(exc)}",
                               node=node.name, hint="check that pgfleet's account on the worker is a superuser") from None
    try:
        with conn.transaction():
            conn.execute("SELECT pgfleet.queue_changed_privileges()")
    except psycopg.Error as exc:
        raise ExecuteError(f"copying privileges to the shards failed: {describe_error(exc)}",
                           node=fleet.coordinator.name) from None
    log.info("roles copied to %d worker(s)", len(topo.workers))
    return fingerprint
