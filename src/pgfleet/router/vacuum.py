"""A client's ``VACUUM …`` / ``ANALYZE …`` of distributed and reference tables as statements per node (pure).

The coordinator cannot do it (its foreign partitions are skipped with a warning each, and VACUUM cannot
run in a function), and the router is the one place that sees a plain ``VACUUM t`` from any client. Not
wired into the session yet: :func:`intercept` is the decision, tested without servers, for when the
router runs statements of its own on several nodes; ``pgfleet vacuum`` / ``pgfleet analyze`` use the
same plan (plan/vacuum.py) today."""

from __future__ import annotations

from collections.abc import Sequence

from pglast import ast, parse_sql
from pglast.parser import ParseError

from ..errors import SpecError
from ..plan.vacuum import Maintenance, MaintenancePlan, plan_maintenance
from .snapshot import RoutedTable, RoutingTopology


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
        options.append((option.defname.lower(), _value(option.arg)))
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
        table = _resolve(rel.relation, topology, search_path)
        if table is None:
            return None
        columns = tuple(str(c.sval) for c in rel.va_cols or () if isinstance(c, ast.String))
        targets.append((table, columns))
    if not targets:
        return None  # the whole database: the coordinator's own tables
    return plan_maintenance(command, tuple(targets))


def _value(arg: object) -> str | None:
    if arg is None:
        return None
    if isinstance(arg, ast.Integer):
        return str(arg.ival)
    if isinstance(arg, ast.Float):
        return str(arg.fval)
    if isinstance(arg, ast.Boolean):
        return "true" if arg.boolval else "false"
    if isinstance(arg, ast.String):
        return str(arg.sval)
    return str(arg)


def _resolve(rel: ast.RangeVar, topology: RoutingTopology, search_path: Sequence[str]) -> RoutedTable | None:
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
