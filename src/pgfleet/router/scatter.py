"""Scatter/gather reads: which multi-shard SELECTs the router runs itself, and the per-node SQL they send.

Pure planning (no I/O). A SELECT over distributed tables that single-shard analysis could not pin to one
shard is planned here when it has one of two shapes, and goes to the coordinator otherwise:

- **aggregates** (count, sum, min, max, avg, bool_and/bool_or/every; FILTER allowed) with any GROUP BY,
  HAVING, ORDER BY, LIMIT/OFFSET: every shard computes partial aggregates grouped by the GROUP BY
  expressions; the final combine (:mod:`.scatter_final`) runs as one SQL statement over the partials;
- **plain rows**: the shards' rows concatenated; with ORDER BY the shards' rows are merged by one SQL
  statement over their sort keys (with LIMIT n, LIMIT n + offset runs on every shard first). FOR UPDATE /
  SHARE only here and without ORDER BY, LIMIT or OFFSET (every shard then locks exactly the rows it
  returns): ORMs' ``select_for_update()`` in a transaction that runs on the workers.

FROM may hold one distributed table, reference tables, and tables co-located with it joined on the key
(inner joins, or outer joins whose preserved side holds a distributed table). Subqueries, WITH, set
operations, DISTINCT, window functions, other locking clauses, functions outside ``walk.SAFE_FUNCTIONS`` and
aggregates other than those above go to the coordinator. Name resolution, columns and functions are
checked by single-shard analysis (:func:`.analyze.prepare`); tables are renamed to shard tables in a copy
of the parse tree, which is deparsed (pglast) per shard.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from collections.abc import Iterator

from pglast import ast, enums
from pglast.stream import RawStream

from .analyze import Prepared, TableRef, prepare
from .gather import NodeQuery, ScatterRead, SortMerge
from .logical import names_for
from .routes import MultiShard
from .scatter_final import (
    AGGREGATES, OTHER_AGGREGATES, Unsupported, bare_name, build_aggregate, is_aggregate, is_star, position)
from .snapshot import RoutingTopology
from .walk import function_name, walk


def plan_scatter(stmt: ast.Node, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> MultiShard | None:
    """A scatter/gather plan for a multi-shard SELECT of a supported shape, else None (the coordinator)."""
    if not isinstance(stmt, ast.SelectStmt):
        return None
    try:
        plan, shard_ids = _plan(stmt, sql, topology, search_path)
    except Unsupported:
        return None
    # a shard's error in logical terms; the text, for the coordinator's RowDescription of the result
    return replace(plan, renames=names_for(topology).renames(shard_ids), text=sql)


def _plan(stmt: ast.SelectStmt, sql: str, topology: RoutingTopology,
          search_path: tuple[str, ...]) -> tuple[ScatterRead, tuple[int, ...]]:
    """The plan, and the ids of every shard it reads."""
    _check_shape(stmt)
    prepared = prepare(sql, topology, search_path=search_path)
    if not isinstance(prepared, Prepared) or prepared.insert_rows:
        raise Unsupported("single-shard analysis refused the statement")
    by_location = {ref.node.location: ref for ref in prepared.refs}
    if any(ref.table.collated for ref in prepared.refs):
        # the merge and the final combine compare with the database's default collation
        raise Unsupported("a column with a collation other than the default")
    _check_joins(stmt.fromClause or (), by_location)
    placements = _placements(prepared)
    shard_ids = tuple(sorted({s.shard_id for ref in prepared.refs for s in ref.table.shards}))
    aggregated = bool(stmt.groupClause) or stmt.havingClause is not None or any(
        is_aggregate(n) for n in walk((stmt.targetList, stmt.sortClause)))
    if aggregated:
        if stmt.lockingClause:
            raise Unsupported("locking with aggregates")
        partial, final = build_aggregate(stmt, prepared.refs)
        nodes = _node_queries(partial, by_location, placements, parenthesize=False)
        return ScatterRead(nodes=nodes, final=final), shard_ids
    return _plain(stmt, by_location, placements), shard_ids


def _check_shape(stmt: ast.SelectStmt) -> None:
    if stmt.withClause is not None or stmt.op != enums.SetOperation.SETOP_NONE or stmt.valuesLists \
            or stmt.intoClause is not None or stmt.distinctClause or stmt.windowClause:
        raise Unsupported("WITH, set operations, VALUES, INTO, DISTINCT or WINDOW")
    if stmt.lockingClause and (stmt.sortClause or stmt.limitCount is not None or stmt.limitOffset is not None
                               or stmt.groupClause or stmt.havingClause is not None):
        raise Unsupported("locking with ORDER BY, LIMIT, OFFSET or aggregates (one server locks only what it returns)")
    if stmt.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES:
        raise Unsupported("FETCH … WITH TIES")
    for node in walk((stmt.targetList, stmt.fromClause, stmt.whereClause, stmt.groupClause, stmt.havingClause,
                      stmt.sortClause, stmt.limitCount, stmt.limitOffset)):
        if isinstance(node, ast.SubLink | ast.RangeSubselect | ast.RangeFunction | ast.GroupingSet | ast.ParamRef
                      | ast.GroupingFunc | ast.RangeTableSample | ast.JsonTable | ast.RangeTableFunc
                      | ast.JsonArrayAgg | ast.JsonObjectAgg):
            raise Unsupported(f"{type(node).__name__} is not scattered")
        if isinstance(node, ast.FuncCall):
            if node.over is not None:
                raise Unsupported("window functions")
            names = [str(n.sval) for n in node.funcname or ()]
            if not names or names[-1] in OTHER_AGGREGATES or (len(names) > 1 and names[:-1] != ["pg_catalog"]):
                raise Unsupported(f"function {'.'.join(names)}")
            if function_name(node) in AGGREGATES and (node.agg_distinct or node.agg_order or node.agg_within_group
                                       or node.func_variadic):
                raise Unsupported("DISTINCT, ordered or variadic aggregates")
        if isinstance(node, ast.SortBy) and node.useOp:
            raise Unsupported("ORDER BY … USING")


def _tables_in(item: ast.Node | None, by_location: dict[int | None, TableRef]) -> Iterator[TableRef]:
    for node in walk(item):
        if isinstance(node, ast.RangeVar) and node.location in by_location:
            yield by_location[node.location]


def _check_joins(items: tuple[ast.Node, ...] | list[ast.Node], by_location: dict[int | None, TableRef]) -> None:
    """Outer joins may not preserve rows of reference tables against distributed ones: every shard would
    return the unmatched rows again."""
    for node in walk(tuple(items)):
        if not isinstance(node, ast.JoinExpr):
            continue
        if node.jointype == enums.JoinType.JOIN_LEFT:
            preserved, nullable = node.larg, node.rarg
        elif node.jointype == enums.JoinType.JOIN_RIGHT:
            preserved, nullable = node.rarg, node.larg
        elif node.jointype != enums.JoinType.JOIN_INNER:
            raise Unsupported(f"join type {node.jointype}")
        else:
            continue

        def distributed(side: ast.Node | None) -> bool:
            return any(not r.table.is_reference for r in _tables_in(side, by_location))
        if distributed(nullable) and not distributed(preserved):
            raise Unsupported("an outer join preserving a reference table against a distributed one")


def _placements(prepared: Prepared) -> tuple[tuple[str, dict[int, tuple[str, str]]], ...]:
    """Per shard index: its node and, per table reference (by location), the table name to use there.
    Every distributed table is in one co-location group and joined to the others on the key."""
    dist = [r for r in prepared.refs if not r.table.is_reference]
    if not dist:
        raise Unsupported("no distributed table")
    if len({r.table.colocation_id for r in dist}) != 1:
        raise Unsupported("tables of different co-location groups")
    reached = {id(dist[0])}
    changed = True
    while changed:
        changed = False
        for a, b in prepared.links:
            if (id(a) in reached) != (id(b) in reached):
                reached |= {id(a), id(b)}
                changed = True
    if any(id(r) not in reached for r in dist):
        raise Unsupported("distributed tables not joined on their keys")
    out = []
    for shard in sorted(dist[0].table.shards, key=lambda s: s.index):
        names: dict[int, tuple[str, str]] = {}
        for ref in prepared.refs:
            location = ref.node.location or 0
            if ref.table.is_reference:
                if not any(s.node == shard.node for s in ref.table.shards):
                    raise Unsupported(f"reference table {ref.table.name} has no copy on {shard.node}")
                names[location] = (ref.table.schema, ref.table.relname)
            else:
                own = ref.table.shard(shard.index)
                if own is None or own.node != shard.node:
                    raise Unsupported("co-located shards on different nodes")
                names[location] = (own.shard_schema, own.shard_table)
        out.append((shard.node, names))
    return tuple(out)


def _render(stmt: ast.SelectStmt, names: dict[int, tuple[str | None, str]]) -> str:
    """The statement with every table reference renamed (an alias keeps column references valid)."""
    copied = copy.deepcopy(stmt)
    for node in walk(copied.fromClause):
        if isinstance(node, ast.RangeVar) and (node.location or 0) in names:
            if node.alias is None:
                node.alias = ast.Alias(aliasname=node.relname)
            node.schemaname, node.relname = names[node.location or 0]
            node.catalogname = None
    return str(RawStream()(copied))


@functools.lru_cache(maxsize=4096)
def _table_name(schema: str, table: str) -> str:
    """A table's qualified name as the deparser writes it (quoted only where needed)."""
    return str(RawStream()(ast.RangeVar(schemaname=schema, relname=table, inh=True, relpersistence="p")))


def _node_queries(stmt: ast.SelectStmt, by_location: dict[int | None, TableRef],
                  placements: tuple[tuple[str, dict[int, tuple[str, str]]], ...], *, parenthesize: bool,
                  locking: bool = False) -> tuple[NodeQuery, ...]:
    """One query per node: its shards' statements joined by UNION ALL. The statement is deparsed once, with
    a marker in place of each table name, and each shard's text made by putting its table names there:
    deparsing per shard cost 0.2–0.4 ms a shard, paid again for every new statement text. A statement with
    FOR UPDATE / SHARE (not allowed in a UNION's branches) is each branch's subquery: ``SELECT * FROM (…)``,
    which locks the rows it reads as the statement itself would."""
    locations = {location for location in by_location if location is not None}
    markers = {location: f"pgfleet_table_{i}_x" for i, location in enumerate(sorted(locations))}
    template = _render(stmt, {location: (None, marker) for location, marker in markers.items()})
    if template.count("pgfleet_table_") != len(markers):  # a marker also elsewhere: one deparse per shard
        template = ""
    per_node: dict[str, list[str]] = {}
    for node, names in placements:
        if set(names) != locations:
            raise Unsupported("a table reference without a placement")
        if template:
            text = template
            for location, marker in markers.items():
                text = text.replace(marker, _table_name(*names[location]), 1)
        else:
            text = _render(stmt, dict(names))
        per_node.setdefault(node, []).append(f"({text})" if parenthesize else text)
    if locking:
        per_node = {node: parts if len(parts) == 1 else [f"SELECT * FROM ({text}) AS _pgfleet_locked" for text in parts]
                    for node, parts in per_node.items()}
    return tuple(NodeQuery(node, " UNION ALL ".join(parts), len(parts)) for node, parts in per_node.items())


def _integer(node: ast.Node | None, what: str) -> int | None:
    if node is None or (isinstance(node, ast.A_Const) and node.isnull):
        return None
    number = position(node)
    if number is not None and number >= 0:
        return number
    raise Unsupported(f"{what} is not a non-negative integer constant")


def _plain(stmt: ast.SelectStmt, by_location: dict[int | None, TableRef],
           placements: tuple[tuple[str, dict[int, tuple[str, str]]], ...]) -> ScatterRead:
    limit = _integer(stmt.limitCount, "LIMIT")
    offset = _integer(stmt.limitOffset, "OFFSET") or 0
    if offset and limit is None:
        raise Unsupported("OFFSET without LIMIT")
    shard = copy.deepcopy(stmt)
    shard.limitOffset = None
    if limit is not None:
        shard.limitCount = ast.A_Const(isnull=False, val=ast.Integer(ival=limit + offset))
    merge = None
    if stmt.sortClause:
        merge = _sort_merge(shard)
        if limit is None:
            shard.sortClause = None  # the merge sorts every row anyway
    nodes = _node_queries(shard, by_location, placements, parenthesize=limit is not None,
                          locking=bool(stmt.lockingClause))
    return ScatterRead(nodes=nodes, merge=merge, limit=limit, offset=offset)


def _sort_merge(shard: ast.SelectStmt) -> SortMerge:
    """Sort keys as result columns: a position, an output name, or an expression appended as a hidden
    column of the shard query. Returns the merge: which columns, with which direction, NULLS and COLLATE."""
    targets = list(shard.targetList or ())
    aliases = {t.name: i for i, t in enumerate(targets) if t.name}
    hidden: list[ast.ResTarget] = []
    keys: list[tuple[int, str]] = []  # (column index, the sort clause for it with a placeholder column)
    for sort in shard.sortClause or ():
        expr = sort.node
        collate = ""
        if isinstance(expr, ast.CollateClause):
            collate = " COLLATE " + ".".join(RawStream()(ast.ColumnRef(fields=(n,))) for n in expr.collname or ())
        number, name = position(expr), bare_name(expr)
        if number is not None:
            if any(is_star(t.val) for t in targets):
                raise Unsupported("ORDER BY a position with * in the select list")
            index = number - 1
            if not 0 <= index < len(targets):
                raise Unsupported("ORDER BY position out of range (the coordinator reports it)")
        elif name is not None and name in aliases:
            index = aliases[name]
        else:
            index = -1 - len(hidden)  # from the end: the position of * is known only at run time
            hidden.append(ast.ResTarget(val=copy.deepcopy(expr)))
        direction = {enums.SortByDir.SORTBY_DESC: " DESC"}.get(sort.sortby_dir, "")
        nulls = {enums.SortByNulls.SORTBY_NULLS_FIRST: " NULLS FIRST",
                 enums.SortByNulls.SORTBY_NULLS_LAST: " NULLS LAST"}.get(sort.sortby_nulls, "")
        keys.append((index, collate + direction + nulls))
    shard.targetList = tuple(targets + hidden)
    # hidden columns counted from the end: -1 is the first hidden one, at position total - len(hidden)
    return SortMerge(keys=tuple((i if i >= 0 else -len(hidden) + (-1 - i), tail) for i, tail in keys), hidden=len(hidden))
