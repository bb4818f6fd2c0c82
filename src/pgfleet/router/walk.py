"""Walking pglast parse trees, and the functions a routed statement may call."""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast, enums

# Built-in functions without side effects that read no table: evaluated on a worker they give what the
# coordinator would. Anything else (nextval, set_config, pg_sleep, advisory locks, user functions, …)
# keeps the statement on the coordinator.
SAFE_FUNCTIONS = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "string_agg", "array_agg", "json_agg",
    "jsonb_agg", "stddev", "variance", "row_number", "rank", "dense_rank", "lag", "lead", "first_value",
    "last_value", "abs", "round", "trunc", "floor", "ceil", "ceiling", "mod", "power", "sqrt", "lower", "upper",
    "length", "char_length", "octet_length", "substr", "substring", "concat", "concat_ws", "trim", "btrim", "ltrim",
    "rtrim", "replace", "left", "right", "lpad", "rpad", "position", "strpos", "md5", "format", "to_char",
    "to_number", "to_date", "to_timestamp", "date_trunc", "date_part", "extract", "age", "now",
    "make_date", "make_interval", "json_build_object", "jsonb_build_object", "json_build_array",
    "jsonb_build_array", "to_json", "to_jsonb", "jsonb_set", "array_length", "cardinality", "unnest",
    "array_position", "starts_with", "split_part", "regexp_replace", "regexp_match", "initcap", "reverse",
    "repeat", "sign", "greatest", "least", "num_nonnulls", "num_nulls", "generate_series",
})


def children(node: ast.Node) -> Iterator[object]:
    """The direct children of a node (nodes, and tuples of nodes), skipping scalar fields."""
    for name in getattr(type(node), "__slots__", ()):
        if name == "location":
            continue
        value = getattr(node, name, None)
        if isinstance(value, ast.Node | tuple | list):
            yield value


def function_name(call: ast.FuncCall) -> str:
    """The function's name, '' when it is qualified by a schema other than pg_catalog."""
    names = [str(n.sval) for n in call.funcname or ()]
    return names[-1] if names and (len(names) == 1 or names[:-1] == ["pg_catalog"]) else ""


def walk(node: object) -> Iterator[ast.Node]:
    """Every node below ``node`` (nodes, tuples and lists of them), ``node`` included."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple | list):
            stack.extend(item)
        elif isinstance(item, ast.Node):
            yield item
            stack.extend(children(item))


def conjuncts(expr: ast.Node | None) -> list[ast.Node]:
    """The AND-ed conditions of a WHERE or ON expression, nested ANDs flattened."""
    if expr is None:
        return []
    if isinstance(expr, ast.BoolExpr) and expr.boolop == enums.BoolExprType.AND_EXPR:
        return [c for arg in expr.args or () for c in conjuncts(arg)]
    return [expr]


def option_value(arg: object) -> str | None:
    """A DefElem option's argument (COPY, VACUUM) as text; None without one, '?' for a shape not known here
    (no option accepts it, so the statement goes to the coordinator)."""
    if arg is None:
        return None
    if isinstance(arg, ast.String):
        return str(arg.sval)
    if isinstance(arg, ast.Boolean):
        return "true" if arg.boolval else "false"
    if isinstance(arg, ast.Integer):
        return str(arg.ival)
    if isinstance(arg, ast.Float):
        return str(arg.fval)
    return "?"

