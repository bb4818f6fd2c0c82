"""A client's ``VACUUM …`` / ``ANALYZE …`` of distributed and reference tables, run by the router.

The coordinator cannot do it (its foreign partitions are skipped with a warning each, and VACUUM cannot
run in a function), and the router is the one place that sees a plain ``VACUUM t`` from any client.
:func:`intercept` is the decision (pure, tested without servers; ``pgfleet vacuum`` / ``pgfleet
analyze`` use the same plan, plan/vacuum.py); :func:`planner` makes it a :class:`VacuumRun` that the
session runs: every worker's shards concurrently (one statement per round trip: VACUUM cannot run in a
multi-statement string), then the coordinator's part on the client's own coordinator connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.parser import ParseError

from . import protocol as p
from . import wire
from ..errors import SpecError
from ..plan.vacuum import Maintenance, MaintenancePlan, plan_maintenance
from .backend import BackendError, lost_in_flight
from .multishard import MultiShardHost
from .routes import MultiShard
from .rewrite import qualified
from .snapshot import RoutedTable, RoutingTopology
from .walk import option_value


def intercept(statement: str, topology: RoutingTopology, search_path: Sequence[str],
              temp_names: frozenset[str] = frozenset()) -> MaintenancePlan | None:
    """The per-node statements of one VACUUM or ANALYZE that names only distributed and reference tables;
    None for anything else (another statement, no table named, a plain or temporary table among them, an
    option this module does not know): the coordinator runs it as it is."""
    try:
        stmts = parse_sql(statement)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.VacuumStmt):
        return None
    node = stmts[0].stmt
    options: list[tuple[str, str | None]] = []
    for option in node.options or ():
        if not isinstance(option, ast.DefElem) or option.defname is None:
            return None
        options.append((option.defname.lower(), option_value(option.arg)))
    try:
        command = Maintenance(vacuum=bool(node.is_vacuumcmd), options=tuple(options))
    except SpecError:
        return None
    targets: list[tuple[RoutedTable, tuple[str, ...]]] = []
    for rel in node.rels or ():
        if not isinstance(rel, ast.VacuumRelation) or rel.relation is None:
            return None
        if not rel.relation.schemaname and rel.relation.relname in temp_names:
            return None
        table = resolve_table(rel.relation, topology, search_path)
        if table is None:
            return None
        columns = tuple(str(c.sval) for c in rel.va_cols or () if isinstance(c, ast.String))
        targets.append((table, columns))
    if not targets:
        return None  # the whole database: the coordinator's own tables
    return plan_maintenance(command, tuple(targets))




def resolve_table(rel: ast.RangeVar, topology: RoutingTopology, search_path: Sequence[str]) -> RoutedTable | None:
    """The table ``rel`` names for the session, if it is distributed or reference (as analyze.py resolves)."""
    name = rel.relname or ""
    if rel.schemaname:
        return topology.table(rel.schemaname, name)
    for schema in ("pg_catalog", *search_path) if "pg_catalog" not in search_path else search_path:
        if schema == "pg_temp" or schema.startswith("pg_temp_"):
            continue
        table = topology.table(schema, name)
        if table is not None:
            return table
        if topology.exists(schema, name):
            return None  # a plain table earlier in the path
    return None


@dataclass(frozen=True)
class VacuumRun(MultiShard):
    """One VACUUM / ANALYZE: statements per worker (each worker's in order, workers concurrently), then
    the coordinator's (reference tables, the parents' statistics) — as text, rendered at planning."""

    workers: tuple[tuple[str, tuple[str, ...]], ...]
    coordinator: tuple[str, ...]
    tag: str  # VACUUM or ANALYZE
    description = "VACUUM/ANALYZE"

    async def run(self, host: MultiShardHost) -> bytes | None:
        started: list[bool] = []
        results = await asyncio.gather(*(self._on_worker(host, node, statements, started)
                                         for node, statements in self.workers), return_exceptions=True)
        notices: list[tuple[bytes, bytes]] = []
        for (node, _), result in zip(self.workers, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, BackendError):
                    raise result
                host.drop_worker(node)
                return lost_in_flight(node) if started else None  # nothing ran: the coordinator runs it
            notices += [m for m in result if m[0] == b"N"]
            error = next((m for m in result if m[0] == b"E"), None)
            if error is not None:
                return wire.frame(*error) + p.ReadyForQuery("I").encode()
        for statement in self.coordinator:
            reply = await host.coordinator(statement)
            notices += [m for m in reply if m[0] == b"N"]
            error = next((m for m in reply if m[0] == b"E"), None)
            if error is not None:
                return b"".join(wire.frame(*m) for m in notices) + wire.frame(*error) + p.ReadyForQuery("I").encode()
        return (b"".join(wire.frame(*m) for m in notices) + p.CommandComplete(self.tag).encode()
                + p.ReadyForQuery("I").encode())

    @staticmethod
    async def _on_worker(host: MultiShardHost, node: str, statements: tuple[str, ...],
                         started: list[bool]) -> list[tuple[bytes, bytes]]:
        """The node's statements under the client's role; their notices and the first error."""
        conn = await host.worker(node)
        started.append(True)
        role = host.role_on(conn)
        out: list[tuple[bytes, bytes]] = []
        if role != conn.user:
            reply = await conn.request(f"SET ROLE {qualified(role)}")
            if reply[0][0] == b"E":
                return [reply[0]]
        try:
            for statement in statements:
                reply = await conn.request(statement)
                out += [m for m in reply if m[0] in (b"N", b"E")]
                if any(m[0] == b"E" for m in reply):
                    break
        finally:
            if role != conn.user:
                await conn.request("RESET ROLE")
        return out


def planner(stmt: ast.Node, text: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> VacuumRun | None:
    """A VACUUM / ANALYZE naming only distributed and reference tables, as a :class:`VacuumRun`."""
    if not isinstance(stmt, ast.VacuumStmt):
        return None
    plan = intercept(text, topology, search_path)
    if plan is None:
        return None
    by_node: dict[str, list[str]] = {}
    for node, statement in plan.workers:
        by_node.setdefault(node, []).append(statement.as_string(None))
    return VacuumRun(tuple((node, tuple(stmts)) for node, stmts in by_node.items()),
                     tuple(s.as_string(None) for s in plan.coordinator), "VACUUM" if stmt.is_vacuumcmd else "ANALYZE")
