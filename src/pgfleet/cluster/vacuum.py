"""``pgfleet vacuum`` / ``pgfleet analyze``: VACUUM and ANALYZE of distributed and reference tables on
their shards (plan/vacuum.py says why and composes the statements). The workers work in parallel, each
on its shards one after the other; the coordinator's part (reference tables, parents' statistics) runs
when every shard is done."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import ExecuteError, SpecError
from ..execute.connect import Conn, describe_error
from ..plan.vacuum import Maintenance, plan_maintenance
from ..spec import QualifiedName
from ..topology.model import DistTable
from ..topology.read import resolve_table
from .fleet import Fleet


@dataclass(frozen=True)
class MaintenanceResult:
    tables: tuple[str, ...]
    statements: int  # run on workers and coordinator


def _run_node(node: str, conn: Conn, statements: list[sql.Composed]) -> None:
    for statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            raise ExecuteError(f"{statement.as_string(conn)} failed: {describe_error(exc)}", node=node) from None


def maintain(fleet: Fleet, command: Maintenance, names: Sequence[QualifiedName] = ()) -> MaintenanceResult:
    """Run ``command`` on the named distributed / reference tables (all of them when none is named)."""
    topo = fleet.topology()
    chosen: list[DistTable] = []
    for name in names:
        table = topo.table(resolve_table(fleet.conn(), name))
        if table is None:
            raise SpecError(f"{name} is neither distributed nor a reference table",
                            hint=f"run {'VACUUM' if command.vacuum else 'ANALYZE'} on it in the coordinator (pgfleet psql)")
        chosen.append(table)
    plan = plan_maintenance(command, tuple((t, ()) for t in (chosen if names else topo.tables)))
    by_node: dict[str, list[sql.Composed]] = {}
    for node, statement in plan.workers:
        by_node.setdefault(node, []).append(statement)
    with fleet.worker_conns(sorted(by_node)) as conns, ThreadPoolExecutor(max_workers=max(1, len(by_node))) as pool:
        for future in [pool.submit(_run_node, node, conns[node], stmts) for node, stmts in by_node.items()]:
            future.result()
    with fleet.new_coordinator_conn() as coordinator:
        coordinator.autocommit = True
        _run_node(fleet.coordinator.name, coordinator, list(plan.coordinator))
    return MaintenanceResult(tuple(str(t.name) for t in (chosen if names else topo.tables)),
                             len(plan.workers) + len(plan.coordinator))
