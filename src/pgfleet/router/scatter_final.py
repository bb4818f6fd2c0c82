"""Aggregates over shards: the partial query every shard runs and the final combine over the partials.

Every shard returns its GROUP BY expressions and partial aggregates (count, sum, min, max, bool_and/or,
and sum + count for avg). The final statement runs in PostgreSQL over the partials, sent as one typed
array per column (``unnest($1, $2, …)``), so that types, arithmetic, NULLs, HAVING, ORDER BY and LIMIT
are PostgreSQL's own: count is ``sum(count)::int8``, sum of int8 partials (sum of int2/int4) is cast back
to int8, avg is ``sum(sum)::numeric / sum(count)::numeric`` for integers and numeric — what PostgreSQL's
own avg computes. The output columns keep their names (PostgreSQL's rules for unnamed columns).

The final statement depends on the partials' types, known when the shards answer: :class:`AggregateFinal`
builds it then (pure, cached per type list).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pglast import ast, enums, parse_sql
from pglast.stream import RawStream

from .analyze import TableRef
from .walk import function_name, walk

AGGREGATES = frozenset({"count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every"})
# PostgreSQL's other built-in aggregates: a statement calling one is not scattered
OTHER_AGGREGATES = frozenset({
    "array_agg", "string_agg", "json_agg", "jsonb_agg", "json_agg_strict", "jsonb_agg_strict", "json_object_agg",
    "jsonb_object_agg", "json_object_agg_strict", "jsonb_object_agg_strict", "json_object_agg_unique",
    "jsonb_object_agg_unique", "json_object_agg_unique_strict", "jsonb_object_agg_unique_strict", "xmlagg",
    "bit_and", "bit_or", "bit_xor", "range_agg", "range_intersect_agg", "any_value", "corr", "covar_pop",
    "covar_samp", "regr_avgx", "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
    "mode", "percentile_cont", "percentile_disc", "rank", "dense_rank", "percent_rank", "cume_dist", "grouping"})
INT8, NUMERIC, FLOAT8, INTERVAL = 20, 1700, 701, 1186
SUM_KEEPS_TYPE = frozenset({NUMERIC, 700, FLOAT8, INTERVAL, 790})  # sum(x) of these partials: same type

_PREFIX = "_pgfleet_"


class Unsupported(Exception):
    """Internal: not a shape the router scatters; the coordinator runs the statement."""


def replace(node: ast.Node, fn: Callable[[ast.Node], ast.Node | None]) -> ast.Node:
    """``node`` with every subtree for which ``fn`` gives a node replaced by it (top-down, in place)."""
    found = fn(node)
    if found is not None:
        return found
    for name in getattr(type(node), "__slots__", ()):
        value = getattr(node, name, None)
        if isinstance(value, ast.Node):
            setattr(node, name, replace(value, fn))
        elif isinstance(value, tuple | list):
            setattr(node, name, tuple(replace(v, fn) if isinstance(v, ast.Node) else v for v in value))
    return node


def is_aggregate(node: ast.Node) -> bool:
    return isinstance(node, ast.FuncCall) and node.over is None and function_name(node) in AGGREGATES


def position(node: ast.Node | None) -> int | None:
    """The number of an ORDER BY / GROUP BY position (an integer constant), else None."""
    if isinstance(node, ast.A_Const) and isinstance(node.val, ast.Integer):
        return int(node.val.ival or 0)
    return None


def bare_name(node: ast.Node | None) -> str | None:
    """The name of an unqualified column reference, else None."""
    if isinstance(node, ast.ColumnRef) and node.fields and len(node.fields) == 1 and isinstance(node.fields[0], ast.String):
        return str(node.fields[0].sval)
    return None


def is_star(node: ast.Node | None) -> bool:
    return isinstance(node, ast.ColumnRef) and isinstance((node.fields or (None,))[-1], ast.A_Star)


def deparse(node: ast.Node) -> str:
    return str(RawStream()(node))


def column(name: str) -> ast.ColumnRef:
    return ast.ColumnRef(fields=(ast.String(sval=name),))


@functools.lru_cache(maxsize=256)
def _snippet(text: str) -> ast.Node:
    """An expression of the router's own (its identifiers only), parsed once."""
    [raw] = parse_sql(f"SELECT {text}")
    assert isinstance(raw.stmt, ast.SelectStmt) and raw.stmt.targetList
    value = raw.stmt.targetList[0].val
    assert isinstance(value, ast.Node)
    return value


def _expression(text: str) -> ast.Node:
    return copy.deepcopy(_snippet(text))


def output_name(expr: ast.Node) -> str:
    """The name PostgreSQL gives an unnamed output column (FigureColname)."""
    name, _ = _figure(expr)
    return name or "?column?"


def _figure(expr: ast.Node) -> tuple[str | None, int]:
    if isinstance(expr, ast.ColumnRef):
        last = (expr.fields or (None,))[-1]
        return (str(last.sval), 2) if isinstance(last, ast.String) else (None, 0)
    if isinstance(expr, ast.FuncCall):
        return str((expr.funcname or (ast.String(sval=""),))[-1].sval), 2
    if isinstance(expr, ast.TypeCast):
        name, strength = _figure(expr.arg) if expr.arg is not None else (None, 0)
        if strength <= 1 and expr.typeName is not None and expr.typeName.names:
            return str(expr.typeName.names[-1].sval), 1
        return name, strength
    if isinstance(expr, ast.CollateClause) and expr.arg is not None:
        return _figure(expr.arg)
    if isinstance(expr, ast.CaseExpr):
        return "case", 1
    if isinstance(expr, ast.CoalesceExpr):
        return "coalesce", 2
    if isinstance(expr, ast.MinMaxExpr):
        return ("greatest" if expr.op == enums.MinMaxOp.IS_GREATEST else "least"), 2
    if isinstance(expr, ast.A_ArrayExpr):
        return "array", 2
    if isinstance(expr, ast.A_Expr):
        return ("nullif", 2) if expr.kind == enums.A_Expr_Kind.AEXPR_NULLIF else (None, 0)
    if isinstance(expr, ast.A_Const | ast.BoolExpr | ast.NullTest | ast.BooleanTest):
        return None, 0
    raise Unsupported(f"the output name of {type(expr).__name__}")


@dataclass(frozen=True)
class Slot:
    """One aggregate of the statement: its function and its partial columns (indexes in the partial row)."""

    kind: str
    columns: tuple[int, ...]


@dataclass
class AggregateFinal:
    """The final combine: a SELECT over ``unnest`` of the partial columns, built once the partial types are
    known. ``template`` has a column reference ``_pgfleet_slotN`` where slot N's final expression goes."""

    template: ast.SelectStmt
    slots: tuple[Slot, ...]
    width: int  # partial columns
    _built: dict[tuple[int, ...], str | None] = field(default_factory=dict, repr=False)

    def sql(self, types: Sequence[int]) -> str | None:
        """The final statement for these partial column types (type oids), or None when a type has no
        exact combine here (e.g. avg of real, sum of a user type)."""
        key = tuple(types)
        if key not in self._built:
            self._built[key] = self._build(key)
        return self._built[key]

    def _build(self, types: tuple[int, ...]) -> str | None:
        finals: dict[str, ast.Node] = {}
        for number, slot in enumerate(self.slots):
            text = _final(slot, types)
            if text is None:
                return None
            finals[f"{_PREFIX}slot{number}"] = _expression(text)

        def fill(node: ast.Node) -> ast.Node | None:
            found = finals.get(bare_name(node) or "")
            return copy.deepcopy(found) if found is not None else None

        return deparse(replace(copy.deepcopy(self.template), fill))


def _final(slot: Slot, types: tuple[int, ...]) -> str | None:
    cols = [f"{_PREFIX}p{i}" for i in slot.columns]
    first = types[slot.columns[0]]
    if slot.kind == "count":
        return f"CAST(sum({cols[0]}) AS int8)"
    if slot.kind == "sum":
        if first == INT8:
            return f"CAST(sum({cols[0]}) AS int8)"
        return f"sum({cols[0]})" if first in SUM_KEEPS_TYPE else None
    if slot.kind in ("min", "max", "bool_and", "bool_or"):
        return f"{slot.kind}({cols[0]})"
    if slot.kind == "every":
        return f"bool_and({cols[0]})"
    if slot.kind == "avg":
        if first in (INT8, NUMERIC):
            return f"(CAST(sum({cols[0]}) AS numeric) / CAST(sum({cols[1]}) AS numeric))"
        if first in (FLOAT8, INTERVAL):
            return f"(sum({cols[0]}) / CAST(sum({cols[1]}) AS float8))"
    return None


class _Builder:
    def __init__(self, stmt: ast.SelectStmt, refs: Sequence[TableRef]) -> None:
        self.stmt = stmt
        self.refs = refs
        self.targets = list(stmt.targetList or ())
        self.groups: list[ast.Node] = []
        self.group_keys: dict[str, int] = {}
        self.partials: list[ast.Node] = []  # partial aggregate calls, after the group columns
        self.partial_keys: dict[str, int] = {}
        self.slots: list[Slot] = []

    # --- matching expressions -----------------------------------------------------------------------
    def canonical(self, node: ast.Node) -> str:
        """``node`` deparsed with every column reference qualified by its table's alias."""
        def qualify(n: ast.Node) -> ast.Node | None:
            if isinstance(n, ast.ColumnRef):
                fields = n.fields or ()
                if any(not isinstance(f, ast.String) for f in fields) or len(fields) > 2:
                    raise Unsupported("a column reference of this form")
                name = fields[-1].sval
                if len(fields) == 2:
                    return ast.ColumnRef(fields=(ast.String(sval=fields[0].sval), ast.String(sval=name)))
                owners = [r for r in self.refs if name in r.table.columns]
                if len(owners) != 1:
                    raise Unsupported(f"column {name} is not one table's")
                return ast.ColumnRef(fields=(ast.String(sval=owners[0].alias), ast.String(sval=name)))
            return None
        return deparse(replace(copy.deepcopy(node), qualify))

    def is_input_column(self, name: str) -> bool:
        return any(name in r.table.columns for r in self.refs)

    # --- GROUP BY -----------------------------------------------------------------------------------
    def group_by(self) -> None:
        for item in self.stmt.groupClause or ():
            expr = item
            number, name = position(item), bare_name(item)
            if number is not None:
                if not 1 <= number <= len(self.targets):
                    raise Unsupported("GROUP BY position out of range (the coordinator reports it)")
                expr = self.targets[number - 1].val
            elif name is not None and not self.is_input_column(name):
                named = [t for t in self.targets if t.name == name]
                if len(named) != 1:
                    raise Unsupported("GROUP BY a name that is not a column")
                expr = named[0].val
            if not isinstance(expr, ast.Node) or any(is_aggregate(n) for n in walk(expr)) or is_star(expr):
                raise Unsupported("GROUP BY an aggregate or *")
            key = self.canonical(expr)
            if key not in self.group_keys:
                self.group_keys[key] = len(self.groups)
                self.groups.append(copy.deepcopy(expr))

    # --- aggregates ---------------------------------------------------------------------------------
    def partial(self, call: ast.FuncCall) -> int:
        key = self.canonical(call)
        if key not in self.partial_keys:
            self.partial_keys[key] = len(self.partials)
            self.partials.append(call)
        return len(self.groups) + self.partial_keys[key]

    def slot(self, call: ast.FuncCall) -> ast.Node:
        kind = function_name(call)
        if any(is_aggregate(n) for n in walk((call.args, call.agg_filter))):
            raise Unsupported("nested aggregates (the coordinator reports it)")
        if kind == "count" and not call.agg_star and len(call.args or ()) != 1:
            raise Unsupported("count with several arguments")
        if kind != "count" and (call.agg_star or len(call.args or ()) != 1):
            raise Unsupported(f"{kind} without exactly one argument")
        if kind == "avg":
            parts = []
            for fn in ("sum", "count"):
                part = copy.deepcopy(call)
                part.funcname = (ast.String(sval=fn),)
                parts.append(self.partial(part))
            columns = tuple(parts)
        else:
            columns = (self.partial(copy.deepcopy(call)),)
        self.slots.append(Slot(kind, columns))
        return column(f"{_PREFIX}slot{len(self.slots) - 1}")

    # --- the final statement ------------------------------------------------------------------------
    def final_expression(self, expr: ast.Node) -> ast.Node:
        def substitute(node: ast.Node) -> ast.Node | None:
            if is_aggregate(node):
                assert isinstance(node, ast.FuncCall)
                return self.slot(node)
            if isinstance(node, ast.A_Const | ast.String | ast.TypeName):
                return None
            if isinstance(node, ast.ColumnRef):
                if is_star(node):
                    raise Unsupported("* with aggregates")
                index = self.group_keys.get(self.canonical(node))
                if index is None:
                    raise Unsupported("a column neither grouped nor aggregated (the coordinator reports it)")
                return column(f"{_PREFIX}p{index}")
            if self.groups:
                try:
                    index = self.group_keys.get(self.canonical(node))
                except Exception:  # not an expression deparse knows on its own (e.g. a sort clause)
                    index = None
                if index is not None:
                    return column(f"{_PREFIX}p{index}")
            return None
        return replace(copy.deepcopy(expr), substitute)


def build_aggregate(stmt: ast.SelectStmt, refs: Sequence[TableRef]) -> tuple[ast.SelectStmt, AggregateFinal]:
    """The partial statement every shard runs (table names still the logical ones) and the final combine."""
    b = _Builder(stmt, refs)
    b.group_by()
    targets = []
    for target in b.targets:
        if target.val is None:
            raise Unsupported("an empty target")
        name = target.name or output_name(target.val)
        targets.append(ast.ResTarget(name=name, val=b.final_expression(target.val)))
    outputs = {t.name for t in targets}
    having = b.final_expression(stmt.havingClause) if stmt.havingClause is not None else None
    sorts = []
    for sort in stmt.sortClause or ():
        expr = sort.node
        keep = position(expr) is not None or bare_name(expr) in outputs
        node = copy.deepcopy(expr) if keep or expr is None else b.final_expression(expr)
        sorts.append(ast.SortBy(node=node, sortby_dir=sort.sortby_dir, sortby_nulls=sort.sortby_nulls))
    width = len(b.groups) + len(b.partials)
    if not width:
        raise Unsupported("nothing to compute on the shards")
    for limit in (stmt.limitCount, stmt.limitOffset):
        if any(isinstance(n, ast.ColumnRef) or is_aggregate(n) for n in walk(limit)):
            raise Unsupported("LIMIT/OFFSET with columns")
    params = ", ".join(f"${i + 1}" for i in range(width))
    columns = ", ".join(f"{_PREFIX}p{i}" for i in range(width))
    [raw] = parse_sql(f"SELECT 1 FROM unnest({params}) AS {_PREFIX}partials ({columns})")
    assert isinstance(raw.stmt, ast.SelectStmt)
    final = ast.SelectStmt(
        targetList=tuple(targets), fromClause=raw.stmt.fromClause,
        groupClause=tuple(column(f"{_PREFIX}p{i}") for i in range(len(b.groups))) or None,
        havingClause=having, sortClause=tuple(sorts) or None,
        limitCount=copy.deepcopy(stmt.limitCount), limitOffset=copy.deepcopy(stmt.limitOffset),
        limitOption=stmt.limitOption, op=enums.SetOperation.SETOP_NONE)
    partial = copy.deepcopy(stmt)
    partial.targetList = tuple(ast.ResTarget(val=copy.deepcopy(n)) for n in b.groups + b.partials)
    partial.groupClause = tuple(copy.deepcopy(g) for g in b.groups) or None
    partial.havingClause = None
    partial.sortClause = None
    partial.limitCount = partial.limitOffset = None
    partial.limitOption = enums.LimitOption.LIMIT_OPTION_DEFAULT
    return partial, AggregateFinal(final, tuple(b.slots), width)
