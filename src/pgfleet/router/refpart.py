"""Writes to reference tables inside a router transaction that already wrote on workers (pure).

Such a transaction cannot move to the coordinator (its rows on the workers would be lost to it), and
before this the write was refused with 0A000: pgbench TPC-B with reference branches and tellers failed
every transaction. Instead the coordinator joins the transaction as one more participant: the write runs
there on a pooled connection under the session's role, as the coordinator runs any reference write (its
trigger queues the written rows for the workers' copies; at commit the queue is applied to every copy
with the coordinator's own two-phase commit). The router commits such a transaction with the coordinator
last (:func:`.twophase.commit_on_coordinator`).

Only a write that reads nothing but reference tables joins so (:func:`coordinator_part`): on the
coordinator a distributed table is read through postgres_fdw, in another transaction than the router's on
the workers, so it would not see this transaction's own rows there. And once the coordinator wrote a
reference table, a later statement that reads that table on a worker would not see the write (the copies
change at commit): :func:`reads_table` finds such a statement, which the transaction refuses."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from pglast import ast, parse_sql
from pglast.parser import ParseError

from .snapshot import RoutedTable, RoutingTopology
from .walk import SAFE_FUNCTIONS, function_name, walk

TableName = tuple[str, str]  # (schema, name)

# Functions that give the same value for the same arguments on every node (no clock, no settings, no
# order of rows): a statement calling only these may run as it is on every copy (see CoordinatorPart).
DETERMINISTIC_FUNCTIONS = frozenset({
    "count", "min", "max", "bool_and", "bool_or", "every", "abs", "round", "trunc", "floor", "ceil", "ceiling",
    "mod", "power", "sqrt", "lower", "upper", "length", "char_length", "octet_length", "substr", "substring",
    "concat", "concat_ws", "trim", "btrim", "ltrim", "rtrim", "replace", "left", "right", "lpad", "rpad", "position",
    "strpos", "md5", "make_date", "make_interval", "jsonb_build_object", "jsonb_build_array", "json_build_object",
    "json_build_array", "to_jsonb", "jsonb_set", "array_length", "cardinality", "array_position", "starts_with",
    "split_part", "initcap", "reverse", "repeat", "sign", "greatest", "least", "num_nonnulls", "num_nulls",
})


@dataclass(frozen=True)
class CoordinatorPart:
    """A statement that the coordinator may run inside a router transaction: a write to a reference table,
    or to a plain table of the coordinator's own (``local``), or a read of only such tables (``reads``)."""

    table: TableName  # the table written (("", "") for a read)
    oid: int  # the coordinator's table (0 for a local one or a read)
    # the worker nodes whose copies the router writes inside the transaction (router/refcopies.py): with the
    # same statement when it calls only DETERMINISTIC_FUNCTIONS, takes no default, and nothing but pgfleet's
    # trigger fires on the table; else (``from_queue``) with the statements the table's trigger queued for
    # them. () → the queued statements reach the copies at COMMIT
    copies: tuple[str, ...] = ()
    from_queue: bool = False
    local: bool = False  # a plain coordinator table, or a read: no copies
    reads: bool = False  # a SELECT


def _resolve(node: ast.RangeVar, topology: RoutingTopology,
             search_path: tuple[str, ...]) -> RoutedTable | TableName | None:
    """The reference table a name means (as the coordinator resolves it), a plain coordinator table's name
    (see ``RoutingTopology.local_tables``), or None for anything else."""
    name = node.relname or ""
    schema = topology.schema_of(node.schemaname, name, search_path)
    if schema is None:
        return None
    table = topology.table(schema, name)
    if table is not None:
        return table if table.is_reference else None
    return (schema, name) if (schema, name) in topology.local_tables else None


def coordinator_part(sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> CoordinatorPart | None:
    """The write when ``sql`` is one INSERT, UPDATE or DELETE of a reference table or a plain coordinator table
    that reads only such tables and calls only built-in functions without side effects; else None."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if len(stmts) == 1 and isinstance(stmts[0].stmt, ast.SelectStmt):
        return _read(stmts[0].stmt, topology, search_path)
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt):
        return None
    stmt = stmts[0].stmt
    if stmt.withClause is not None or stmt.relation is None:
        return None
    target = _resolve(stmt.relation, topology, search_path)
    if target is None:
        return None
    deterministic = True
    for node in walk(stmt):
        if isinstance(node, ast.RangeVar):
            found = _resolve(node, topology, search_path)
            if found is None:
                return None  # a distributed or unknown table, a view, a table with triggers of its own
            deterministic = deterministic and not isinstance(found, tuple)  # the copies cannot read a local table
        if isinstance(node, ast.RangeFunction | ast.CurrentOfExpr):
            return None
        if isinstance(node, ast.FuncCall):
            name = function_name(node)
            if name not in SAFE_FUNCTIONS:
                return None
            deterministic = deterministic and name in DETERMINISTIC_FUNCTIONS and node.over is None
        elif isinstance(node, ast.SQLValueFunction | ast.SetToDefault):
            deterministic = False  # CURRENT_TIMESTAMP, …, DEFAULT: evaluated on each node
        elif isinstance(node, ast.SelectStmt) and (node.limitCount is not None or node.limitOffset is not None):
            deterministic = False  # which rows a LIMIT keeps depends on each copy's order
    if isinstance(target, tuple):
        return CoordinatorPart(target, 0, local=True)
    if isinstance(stmt, ast.InsertStmt):  # every column given, so no column takes its default
        given = [c.name for c in stmt.cols] if stmt.cols else list(target.columns)
        rows = stmt.selectStmt.valuesLists if isinstance(stmt.selectStmt, ast.SelectStmt) else None
        deterministic = deterministic and sorted(given) == sorted(target.columns) and bool(rows) \
            and all(len(row) == len(given) for row in rows or ())
    nodes = tuple(sorted({s.node for s in target.shards}))
    if deterministic and target.statement_copies:
        return CoordinatorPart((target.schema, target.relname), target.oid, nodes)
    if target.queued_copies:
        return CoordinatorPart((target.schema, target.relname), target.oid, nodes, from_queue=True)
    return CoordinatorPart((target.schema, target.relname), target.oid)


def _read(stmt: ast.SelectStmt, topology: RoutingTopology, search_path: tuple[str, ...]) -> CoordinatorPart | None:
    """A SELECT that reads only reference tables and the coordinator's own plain tables, calling only built-in
    functions without side effects (the coordinator participant sees the transaction's writes of both)."""
    if stmt.intoClause is not None or stmt.withClause is not None:
        return None
    for node in walk(stmt):
        if isinstance(node, ast.RangeVar) and _resolve(node, topology, search_path) is None:
            return None
        if isinstance(node, ast.RangeFunction | ast.IntoClause):
            return None
        if isinstance(node, ast.FuncCall) and function_name(node) not in SAFE_FUNCTIONS:
            return None
    return CoordinatorPart(("", ""), 0, local=True, reads=True)


@functools.lru_cache(maxsize=512)
def reads_table(sql: str, tables: frozenset[TableName]) -> TableName | None:
    """One of ``tables`` that ``sql`` names (a name without schema matches every schema: the check errs
    on the side of refusing); None when it names none of them or does not parse."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    for node in walk([s.stmt for s in stmts]):
        if isinstance(node, ast.RangeVar):
            for schema, name in tables:
                if node.relname == name and node.schemaname in (None, "", schema):
                    return schema, name
    return None
