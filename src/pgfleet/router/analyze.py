"""Where a statement can run: pure analysis of SQL text against a :class:`RoutingTopology`.

``prepare(sql, topology, search_path)`` parses once (pglast, the PostgreSQL 18 parser) and either
refuses (:class:`Coordinator` with the reason) or returns a :class:`Prepared` whose ``bind(params)``
gives the route for parameter values: :class:`Shard` (one worker, the statement rewritten so that table
names become the shard tables — by parse-tree positions, never string search), :class:`Split` (a
multi-row INSERT cut into one INSERT per shard) or :class:`Coordinator`.

Conservative by construction: a statement is routed only when every distributed table in it is proven
to read or write rows of one shard of one co-location group — by its key equal to a constant or a
parameter (or an IN list within one shard) in an AND-ed condition of its own query level, or equal to
the key of a table so pinned — and everything else in it is known to be harmless on a worker
(reference tables, built-in functions without side effects). Anything else goes to the coordinator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError

from .routes import Coordinator as Coordinator  # re-exported: the routes analysis gives
from .routes import Route as Route
from .routes import Shard as Shard
from .routes import Split as Split
from .bound import Prepared as Prepared  # re-exported, with what the analysis makes it of
from .bound import Refuse as Refuse
from .bound import Scope as Scope
from .bound import TableRef as TableRef
from .rewrite import values_rows
from .identity import insert_refusal, update_refusal
from .shardmap import KeyValue, Param
from .snapshot import RoutedTable, RoutingTopology
from .walk import SAFE_FUNCTIONS, children, conjuncts


_N = TypeVar("_N")


def analyze(sql: str, topology: RoutingTopology, *, search_path: Sequence[str] = ("public",),
            temp_names: frozenset[str] = frozenset(), params: Sequence[str | None] = ()) -> Route:
    """The route of one statement with these parameter values (text form; None = NULL)."""
    prepared = prepare(sql, topology, search_path=search_path, temp_names=temp_names)
    return prepared if isinstance(prepared, Coordinator) else prepared.bind(params)


def prepare(sql: str, topology: RoutingTopology, *, search_path: Sequence[str] = ("public",),
            temp_names: frozenset[str] = frozenset()) -> Prepared | Coordinator:
    """``search_path``: the session's effective schemas in order ($user already substituted);
    ``temp_names``: the session's temporary relations, which shadow every schema."""
    try:
        stmts = parse_sql(sql)
    except ParseError as exc:
        return Coordinator(f"does not parse here ({exc}); the coordinator reports the error")
    if len(stmts) != 1:
        return Coordinator("not exactly one statement" if stmts else "empty statement")
    try:
        return _Analyzer(sql, topology, tuple(search_path), temp_names).statement(_need(stmts[0].stmt))
    except Refuse as exc:
        return Coordinator(str(exc))


class _Analyzer:
    def __init__(self, sql: str, topology: RoutingTopology, search_path: tuple[str, ...], temp_names: frozenset[str]) -> None:
        self.sql = sql
        self.topology = topology
        self.search_path = search_path
        self.temp_names = temp_names
        self.refs: list[TableRef] = []
        self.pins: list[tuple[TableRef, tuple[KeyValue, ...]]] = []
        self.links: list[tuple[TableRef, TableRef]] = []
        self.levels = 0

    # --- statements ---------------------------------------------------------------------------------
    def statement(self, stmt: ast.Node) -> Prepared:
        if isinstance(stmt, ast.SelectStmt):
            self.select(stmt, None)
        elif isinstance(stmt, ast.InsertStmt):
            return self.insert(stmt)
        elif isinstance(stmt, ast.UpdateStmt | ast.DeleteStmt):
            self.modify(stmt)
        else:
            raise Refuse(f"{type(stmt).__name__} is not routed")
        if not any(not r.table.is_reference for r in self.refs):
            raise Refuse("no distributed table")
        return Prepared(self.sql, tuple(self.refs), tuple(self.pins), tuple(self.links))

    def select(self, stmt: ast.SelectStmt, parent: Scope | None) -> None:
        if stmt.withClause is not None:
            raise Refuse("WITH queries are not routed")
        if stmt.op != enums.SetOperation.SETOP_NONE:
            raise Refuse("set operations (UNION, INTERSECT, EXCEPT) are not routed")
        if stmt.valuesLists:
            raise Refuse("VALUES lists are not routed")
        if stmt.intoClause is not None:
            raise Refuse("SELECT INTO creates a table")
        scope = self.scope(parent)
        for item in stmt.fromClause or ():
            self.from_item(item, scope)
        if stmt.lockingClause and any(r.table.is_reference for r in scope.refs):
            raise Refuse("row locks on a reference table would lock one copy only")
        self.restrict(stmt.whereClause, scope, scope.refs)
        for name in ("targetList", "whereClause", "groupClause", "havingClause", "sortClause", "windowClause",
                     "distinctClause", "limitCount", "limitOffset"):
            self.expressions(getattr(stmt, name), scope)

    def modify(self, stmt: ast.UpdateStmt | ast.DeleteStmt) -> None:
        if stmt.withClause is not None:
            raise Refuse("WITH queries are not routed")
        scope = self.scope(None)
        target = self.table_ref(_need(stmt.relation), scope)
        if target.table.is_reference:
            raise Refuse(f"writes to reference table {target.table.name} go to every copy")
        extra = stmt.fromClause if isinstance(stmt, ast.UpdateStmt) else stmt.usingClause
        for item in extra or ():
            self.from_item(item, scope)
        if isinstance(stmt, ast.UpdateStmt):
            for res in stmt.targetList or ():
                if res.name == target.table.key:
                    raise Refuse(f"UPDATE of the distribution key {target.table.key} moves rows between shards")
            if (why := update_refusal(target.table, stmt.targetList or ())) is not None:
                raise Refuse(why)
            self.expressions(stmt.targetList, scope)
        if stmt.whereClause is not None and isinstance(stmt.whereClause, ast.CurrentOfExpr):
            raise Refuse("WHERE CURRENT OF a cursor")
        self.restrict(stmt.whereClause, scope, scope.refs)
        self.expressions(stmt.whereClause, scope)
        self.expressions(stmt.returningClause, scope)

    def insert(self, stmt: ast.InsertStmt) -> Prepared:
        if stmt.withClause is not None:
            raise Refuse("WITH queries are not routed")
        scope = self.scope(None)
        relation = _need(stmt.relation)
        target = self.table_ref(relation, scope)
        table = target.table
        if table.is_reference:
            raise Refuse(f"writes to reference table {table.name} go to every copy")
        select = stmt.selectStmt
        if not isinstance(select, ast.SelectStmt) or not select.valuesLists or select.fromClause:
            raise Refuse("INSERT without a VALUES list (DEFAULT VALUES, INSERT … SELECT) is not routed")
        columns = [c.name for c in stmt.cols] if stmt.cols else list(table.columns)
        if table.key not in columns:
            raise Refuse(f"INSERT without the distribution key {table.key} (its default is computed on the coordinator)")
        if (why := insert_refusal(table, columns, select.valuesLists, stmt.override)) is not None:
            raise Refuse(why)
        position = columns.index(table.key)
        keys: list[KeyValue] = []
        for row in select.valuesLists:
            if position >= len(row):
                raise Refuse("a VALUES row without the key")
            keys.append(self.constant(row[position], f"the key {table.key} of an inserted row"))
            self.expressions(row, scope)
        if stmt.onConflictClause is not None:
            # EXCLUDED names the proposed row: a table of the statement, never rewritten
            conflict = self.scope(scope)
            conflict.refs.append(TableRef(table, "excluded", relation, conflict.level, True))
            self.expressions(stmt.onConflictClause, conflict)
        self.expressions(stmt.returningClause, scope)
        spans, values_span = values_rows(self.sql, relation.location or 0)
        if len(spans) != len(keys):
            raise Refuse("could not delimit the VALUES rows")
        return Prepared(self.sql, (target,), (), (), tuple(zip(keys, spans, strict=True)), values_span)

    # --- FROM ---------------------------------------------------------------------------------------
    def scope(self, parent: Scope | None) -> Scope:
        self.levels += 1
        return Scope(self.levels, parent)

    def from_item(self, item: ast.Node, scope: Scope) -> list[TableRef]:
        if isinstance(item, ast.RangeVar):
            return [self.table_ref(item, scope)]
        if isinstance(item, ast.JoinExpr):
            if item.isNatural:
                raise Refuse("NATURAL joins are not routed")
            left = self.from_item(_need(item.larg), scope)
            right = self.from_item(_need(item.rarg), scope)
            kind = item.jointype
            if kind == enums.JoinType.JOIN_FULL:
                raise Refuse("FULL JOIN is not routed")
            if kind == enums.JoinType.JOIN_INNER:
                restricted = left + right
            elif kind == enums.JoinType.JOIN_LEFT:
                restricted = right
            elif kind == enums.JoinType.JOIN_RIGHT:
                restricted = left
            else:
                raise Refuse(f"join type {kind} is not routed")
            if item.usingClause:
                for name in item.usingClause:
                    self.using_link(name.sval, left, right, restricted)
            self.restrict(item.quals, scope, restricted, constants=kind == enums.JoinType.JOIN_INNER)
            self.expressions(item.quals, scope)
            if item.alias is not None:
                raise Refuse("aliased joins are not routed")
            return left + right
        raise Refuse(f"{type(item).__name__} in FROM is not routed")

    def table_ref(self, node: ast.RangeVar, scope: Scope) -> TableRef:
        if node.catalogname:
            raise Refuse("database-qualified table names are not routed")
        table = self.resolve(node)
        alias = (node.alias.aliasname if node.alias is not None else node.relname) or ""
        if node.alias is not None and node.alias.colnames:
            raise Refuse("column aliases on a table are not routed")
        if any(r.alias == alias for r in scope.refs):
            raise Refuse(f"table name {alias} used twice at one level")
        ref = TableRef(table, alias, node, scope.level, node.alias is not None)
        scope.refs.append(ref)
        self.refs.append(ref)
        return ref

    def resolve(self, node: ast.RangeVar) -> RoutedTable:
        name = node.relname or ""
        if not node.schemaname and name in self.temp_names:
            raise Refuse(f"{name} is a temporary table of this session")
        schema = self.topology.schema_of(node.schemaname, name, self.search_path)
        if schema is None:
            raise Refuse(f"relation {name} is not known to the router")
        table = self.topology.table(schema, name)
        if table is None:
            raise Refuse(f"{schema}.{name} is not a distributed or reference table")
        if table.row_security:
            raise Refuse(f"{schema}.{name} has row-level security: the coordinator applies its policies")
        return table

    # --- conditions ---------------------------------------------------------------------------------
    def restrict(self, expr: ast.Node | None, scope: Scope, restricted: Sequence[TableRef], *, constants: bool = True) -> None:
        """Pins and links from the AND-ed conditions ``expr`` that restrict the rows of ``restricted``."""
        for cond in conjuncts(expr):
            if not isinstance(cond, ast.A_Expr) or cond.name is None or len(cond.name) != 1 or cond.name[0].sval != "=":
                continue
            lexpr, rexpr = cond.lexpr, cond.rexpr
            if cond.kind == enums.A_Expr_Kind.AEXPR_OP and isinstance(lexpr, ast.Node) and isinstance(rexpr, ast.Node):
                left, right = self.key_ref(lexpr, scope), self.key_ref(rexpr, scope)
                if left is not None and right is not None:
                    for a, b in ((left, right), (right, left)):
                        if a in restricted and _same_key_type(a, b):
                            self.links.append((a, b))
                elif constants:
                    for key, other in ((left, rexpr), (right, lexpr)):
                        if key is not None and key in restricted and (value := self.maybe_constant(other)) is not None:
                            self.pins.append((key, (value,)))
            elif cond.kind == enums.A_Expr_Kind.AEXPR_IN and constants:
                key = self.key_ref(lexpr if isinstance(lexpr, ast.Node) else None, scope)
                if key is not None and key in restricted and isinstance(rexpr, tuple | list):
                    values = [self.maybe_constant(v) for v in rexpr]
                    if all(v is not None for v in values):
                        self.pins.append((key, tuple(v for v in values if v is not None)))

    def using_link(self, column: str, left: list[TableRef], right: list[TableRef], restricted: Sequence[TableRef]) -> None:
        a = [r for r in left if column in r.table.columns]
        b = [r for r in right if column in r.table.columns]
        if len(a) == 1 and len(b) == 1 and a[0].table.key == column == b[0].table.key:
            for x, y in ((a[0], b[0]), (b[0], a[0])):
                if x in restricted and _same_key_type(x, y):
                    self.links.append((x, y))

    def key_ref(self, expr: ast.Node | None, scope: Scope) -> TableRef | None:
        """The table whose distribution key ``expr`` is (a column reference), else None."""
        if not isinstance(expr, ast.ColumnRef):
            return None
        found = self.column(expr, scope)
        if found is None:
            return None
        ref, column = found
        return ref if column == ref.table.key and not ref.table.is_reference else None

    def column(self, expr: ast.ColumnRef, scope: Scope) -> tuple[TableRef, str] | None:
        fields = expr.fields or ()
        if len(fields) > 2:
            raise Refuse("schema-qualified column references are not routed")
        if isinstance(fields[-1], ast.A_Star):
            if len(fields) == 2:
                self.alias_ref(fields[0].sval, scope)
            return None
        name = fields[-1].sval
        if len(fields) == 2:
            ref = self.alias_ref(fields[0].sval, scope)
            if name not in ref.table.columns:
                raise Refuse(f"{ref.alias}.{name}: not a column the router knows")
            return ref, name
        level: Scope | None = scope
        while level is not None:
            owners = [r for r in level.refs if name in r.table.columns]
            if len(owners) > 1:
                raise Refuse(f"column reference {name} is ambiguous")
            if owners:
                return owners[0], name
            if any(r.alias == name for r in level.refs):
                raise Refuse(f"whole-row reference {name} is not routed")
            level = level.parent
        return None  # e.g. an output column name in ORDER BY: PostgreSQL resolves it, no table involved

    def alias_ref(self, alias: str, scope: Scope) -> TableRef:
        level: Scope | None = scope
        while level is not None:
            for ref in level.refs:
                if ref.alias == alias:
                    return ref
            level = level.parent
        raise Refuse(f"missing FROM-clause entry for {alias} (the coordinator reports it)")

    def maybe_constant(self, expr: ast.Node | None) -> KeyValue | None:
        try:
            return self.constant(expr, "")
        except Refuse:
            return None

    def constant(self, expr: ast.Node | None, what: str) -> KeyValue:
        if isinstance(expr, ast.TypeCast):
            expr = expr.arg
        if isinstance(expr, ast.ParamRef):
            return Param(expr.number or 0)
        if isinstance(expr, ast.A_Const):
            if expr.isnull:
                return None
            val = expr.val
            if isinstance(val, ast.Integer):
                return str(val.ival)
            if isinstance(val, ast.String):
                return val.sval
            if isinstance(val, ast.Float):
                return val.fval
        raise Refuse(f"{what or 'a value'} is not a constant or a parameter")

    # --- everything else ----------------------------------------------------------------------------
    def expressions(self, node: object, scope: Scope) -> None:
        """Check every expression below ``node``: known columns, harmless functions, subqueries routed too."""
        if node is None:
            return
        if isinstance(node, tuple | list):
            for item in node:
                self.expressions(item, scope)
            return
        if not isinstance(node, ast.Node):
            return
        if isinstance(node, ast.SubLink):
            if not isinstance(node.subselect, ast.SelectStmt):
                raise Refuse("a subquery that is not a SELECT")
            self.select(node.subselect, scope)
            self.expressions(node.testexpr, scope)
            return
        if isinstance(node, ast.FuncCall):
            name = ".".join(n.sval for n in node.funcname or ())
            if name.removeprefix("pg_catalog.") not in SAFE_FUNCTIONS:
                raise Refuse(f"function {name} may have side effects or read other tables")
        elif isinstance(node, ast.ColumnRef):
            self.column(node, scope)
            return
        elif isinstance(node, ast.RangeVar | ast.RangeSubselect | ast.RangeFunction | ast.SelectStmt):
            raise Refuse(f"{type(node).__name__} inside an expression is not routed")
        for child in children(node):
            self.expressions(child, scope)


def _same_key_type(a: TableRef, b: TableRef) -> bool:
    return a.table.colocation_id == b.table.colocation_id and a.table.key_type == b.table.key_type


def _need(node: _N | None) -> _N:
    if node is None:
        raise Refuse("an incomplete parse tree")
    return node
