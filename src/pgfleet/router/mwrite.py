"""The planner of writes the router runs itself over several shards (executed by :mod:`.shardwrite`).

Pure: from the parsed statement and the routing topology, the statement of every shard it touches (table
names replaced by shard tables at parse-tree positions, as single-shard routing does in :mod:`.analyze`),
or None: the coordinator runs it. Planned:

* UPDATE / DELETE of a distributed table whose key is not pinned to one shard (any WHERE, RETURNING),
  with FROM / USING of reference tables and of co-located tables joined on the key — every shard of the
  target (or the shards its key IN list / equalities name), the other tables' matching shards;
* TRUNCATE of distributed tables: every shard (not RESTART IDENTITY, not CASCADE);
* a multi-row INSERT whose rows fall in several shards (:class:`~.routes.Split`);
* INSERT … SELECT between co-located tables when the inserted key is the selected table's key: per pair.

Not planned, so run by the coordinator: UPDATE of the key, writes to reference tables, tables of
different co-location groups or joins not on the key, INSERT … SELECT with aggregates, DISTINCT, LIMIT,
window functions, ON CONFLICT or a computed key, WITH, and whatever single-shard analysis refuses
(functions with side effects, row-level security, …).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pglast import ast, enums

from .analyze import Prepared, Refuse, TableRef, _Analyzer, analyze, prepare
from .logical import names_for
from .routes import Coordinator, Shard, Split
from .rewrite import qualified
from .shardmap import NotPlaced, shard_index
from .shardwrite import NodeWrites, ShardWrite
from .snapshot import RoutingTopology
from .walk import children

AGGREGATES = frozenset({"count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "string_agg", "array_agg",
                        "json_agg", "jsonb_agg", "stddev", "variance"})


def plan_write(stmt: ast.Node, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> ShardWrite | None:
    """The write as statements per shard, its errors in the logical tables' terms (logical.py); None: the
    coordinator runs it."""
    plan = _plan_write(stmt, sql, topology, search_path)
    if plan is None:
        return None
    return replace(plan, renames=names_for(topology).renames(tuple(sorted(plan.shard_ids))))


def _plan_write(stmt: ast.Node, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> ShardWrite | None:
    try:
        if isinstance(stmt, ast.UpdateStmt | ast.DeleteStmt):
            return _modify(stmt, sql, topology, search_path)
        if isinstance(stmt, ast.TruncateStmt):
            return _truncate(stmt, sql, topology, search_path)
        if isinstance(stmt, ast.InsertStmt):
            select = stmt.selectStmt
            if isinstance(select, ast.SelectStmt) and select.valuesLists:
                return _split(sql, topology, search_path)
            return _insert_select(stmt, sql, topology, search_path)
    except (Refuse, NotPlaced):
        return None
    return None


def by_node(shards: Sequence[Shard], rows: Sequence[tuple[int, ...]] = ()) -> ShardWrite:
    """The shard statements grouped by node (nodes in the order first met)."""
    grouped: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for i, shard in enumerate(shards):
        grouped.setdefault(shard.node, []).append((shard.sql, rows[i] if rows else ()))
    return ShardWrite(tuple(NodeWrites(node, tuple(s for s, _ in items), tuple(r for _, r in items) if rows else ())
                            for node, items in grouped.items()),
                      shard_ids=frozenset(i for shard in shards for i in shard.shard_ids))


def _follow(root: TableRef, prepared: Prepared) -> bool:
    """Every distributed table of the statement reads the shard of ``root``'s: joined to it on the key
    (directly or through others so joined), within one co-location group."""
    reached = {id(root)}
    changed = True
    while changed:
        changed = False
        for restricted, other in prepared.links:
            if id(other) in reached and id(restricted) not in reached:
                reached.add(id(restricted))
                changed = True
    return all(id(r) in reached for r in prepared.refs if not r.table.is_reference)


def _target_shards(target: TableRef, prepared: Prepared) -> list[int]:
    """The shard indexes the target's own conditions leave (key = c, key IN (…)), else all of them."""
    indexes = {s.index for s in target.table.shards}
    for ref, values in prepared.pins:
        if ref is target:
            try:
                indexes &= {shard_index(target.table, v, ()) for v in values}
            except (NotPlaced, Refuse):
                continue  # a value the router cannot place: that condition does not narrow
    return sorted(indexes)


def _per_shard(target: TableRef, prepared: Prepared, sql: str) -> ShardWrite | None:
    if not _follow(target, prepared):
        return None
    shards = [prepared._route(index, sql) for index in _target_shards(target, prepared)]  # analyze's placement
    if not shards:
        return None  # no shard can hold a row: the coordinator answers (UPDATE 0 and the RETURNING columns)
    return by_node(shards)


def _modify(stmt: ast.UpdateStmt | ast.DeleteStmt, sql: str, topology: RoutingTopology,
            search_path: tuple[str, ...]) -> ShardWrite | None:
    prepared = prepare(sql, topology, search_path=search_path)
    if isinstance(prepared, Coordinator) or stmt.relation is None or not stmt.relation.inh:
        return None  # refused by the analysis (key UPDATE, reference target, unsafe functions, …) or ONLY
    target = prepared.refs[0]  # the analysis meets the target first
    return _per_shard(target, prepared, sql)


def _truncate(stmt: ast.TruncateStmt, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> ShardWrite | None:
    if stmt.restart_seqs or stmt.behavior == enums.DropBehavior.DROP_CASCADE:
        return None  # sequences are the coordinator's; CASCADE reaches tables the router does not know
    analyzer = _Analyzer(sql, topology, search_path, frozenset())
    tables = []
    for relation in stmt.relations or ():
        if not isinstance(relation, ast.RangeVar) or not relation.inh or relation.catalogname:
            return None
        table = analyzer.resolve(relation)
        if table.is_reference:
            return None
        tables.append(table)
    names: dict[str, list[str]] = {}
    for table in tables:
        for shard in sorted(table.shards, key=lambda s: s.index):
            names.setdefault(shard.node, []).append(qualified(shard.shard_schema, shard.shard_table))
    if not names:
        return None
    return ShardWrite(tuple(NodeWrites(node, (f"TRUNCATE TABLE {', '.join(tables_here)}",))
                            for node, tables_here in names.items()),
                      shard_ids=frozenset(s.shard_id for table in tables for s in table.shards))


def _split(sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> ShardWrite | None:
    route = analyze(sql, topology, search_path=search_path)
    if not isinstance(route, Split):
        return None
    return by_node([shard for shard, _ in route.parts], [rows for _, rows in route.parts])


def _insert_select(stmt: ast.InsertStmt, sql: str, topology: RoutingTopology,
                   search_path: tuple[str, ...]) -> ShardWrite | None:
    select = stmt.selectStmt
    if not isinstance(select, ast.SelectStmt) or not select.fromClause or stmt.relation is None or not stmt.relation.inh:
        return None
    if stmt.withClause is not None or stmt.onConflictClause is not None or stmt.override:
        return None
    if select.op != enums.SetOperation.SETOP_NONE or any(
            getattr(select, name) for name in ("groupClause", "havingClause", "distinctClause", "windowClause",
                                               "limitCount", "limitOffset", "lockingClause", "withClause")):
        return None  # per shard these would not give the single server's rows
    if _aggregates(select.targetList):
        return None
    analyzer = _Analyzer(sql, topology, search_path, frozenset())
    scope = analyzer.scope(None)
    target = analyzer.table_ref(stmt.relation, scope)
    if target.table.is_reference:
        return None
    analyzer.select(select, None)
    analyzer.expressions(stmt.returningClause, scope)
    columns = [c.name for c in stmt.cols or ()] or list(target.table.columns)
    if target.table.key not in columns:
        return None
    source = _selected_key(select, analyzer.refs, target.level + 1, columns.index(target.table.key))
    if source is None or source.table.is_reference or source.table.colocation_id != target.table.colocation_id \
            or source.table.key_type != target.table.key_type:
        return None
    analyzer.links.append((target, source))  # each inserted row's key is its source row's: the same shard
    prepared = Prepared(sql, tuple(analyzer.refs), tuple(analyzer.pins), tuple(analyzer.links))
    return _per_shard(source, prepared, sql)


def _aggregates(targets: object) -> bool:
    """Whether a target list calls an aggregate or a window function (at any depth, subqueries aside)."""
    stack = [targets]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(node)
        elif isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval if node.funcname else ""
            if name in AGGREGATES or node.over is not None or node.agg_star:
                return True
            stack.extend([node.args, node.agg_filter])
        elif isinstance(node, ast.Node) and not isinstance(node, ast.SubLink):
            stack.extend(children(node))
    return False


def _selected_key(select: ast.SelectStmt, refs: Sequence[TableRef], level: int, position: int) -> TableRef | None:
    """The FROM table of ``select`` (query level ``level``) whose key the select list gives at ``position``."""
    here = [r for r in refs if r.level == level]
    targets = select.targetList or ()
    star = targets[0].val if len(targets) == 1 else None
    if isinstance(star, ast.ColumnRef) and star.fields and isinstance(star.fields[-1], ast.A_Star):
        fields = star.fields
        owners = [r for r in here if r.alias == fields[0].sval] if len(fields) == 2 else here
        if len(owners) != 1 or (len(here) != 1 and len(fields) == 1):
            return None
        ref = owners[0]
        return ref if ref.table.columns.index(ref.table.key) == position else None
    if position >= len(targets) or any(isinstance(getattr(t.val, "fields", (None,))[-1], ast.A_Star) for t in targets):
        return None
    value = targets[position].val
    if not isinstance(value, ast.ColumnRef):
        return None
    fields = value.fields or ()
    if len(fields) == 2:
        owners = [r for r in here if r.alias == fields[0].sval]
    elif len(fields) == 1:
        owners = [r for r in here if fields[0].sval in r.table.columns]
    else:
        return None
    if len(owners) != 1 or owners[0].table.key != fields[-1].sval:
        return None
    return owners[0]
