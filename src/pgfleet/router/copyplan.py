"""The planner of COPY through the router (pure): ``COPY dist_table [(cols)] FROM STDIN`` and
``COPY dist_table [(cols)] TO STDOUT`` in text or CSV format become a :class:`~.copyin.CopyIn` or
:class:`~.copyout.CopyOut` plan over the table's shards. Everything else stays with the coordinator:
reference and non-distributed tables, COPY with WHERE, COPY (query), files and programs, binary format,
and options the router does not reproduce (HEADER MATCH, FREEZE, ENCODING, ON_ERROR, DEFAULT, FORCE_*,
a QUOTE or ESCAPE other than the double quote)."""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast
from psycopg import sql

from ..copytext import CopyFormat
from ..errors import SpecError
from .analyze import Refuse, _Analyzer
from .copyin import CopyIn
from .copyout import CopyOut
from .routes import MultiShard
from .snapshot import RoutedTable, RoutingTopology
from .walk import option_value

_PASSED = frozenset({"format", "header", "delimiter", "null"})  # options the shard statements carry
_TRUE = frozenset({"true", "on", "1"})
_FALSE = frozenset({"false", "off", "0"})


@dataclass(frozen=True)
class CopyOptions:
    fmt: CopyFormat
    header: bool
    null: str | None

    def composed(self, *, header: bool = False) -> sql.Composable:
        parts: list[sql.Composable] = [sql.SQL("FORMAT csv" if self.fmt.csv else "FORMAT text")]
        if self.fmt.delimiter is not None:
            parts.append(sql.SQL("DELIMITER {}").format(sql.Literal(self.fmt.delimiter)))
        if self.null is not None:
            parts.append(sql.SQL("NULL {}").format(sql.Literal(self.null)))
        if header:
            parts.append(sql.SQL("HEADER true"))
        return sql.SQL(", ").join(parts)


def copy_options(options: tuple[ast.Node, ...] | None) -> CopyOptions | None:
    """The options of a COPY the router can run, or None (the coordinator runs it)."""
    found: dict[str, str | None] = {}
    for option in options or ():
        if not isinstance(option, ast.DefElem) or option.defname in found:
            return None  # a repeated option: the coordinator reports it
        name = str(option.defname)
        value = option_value(option.arg)
        if name in ("quote", "escape") and value == '"':
            continue
        if name not in _PASSED or value == "?":
            return None
        found[name] = value
    fmt_name = (found.get("format") or "text").lower()
    header_text = (found.get("header") or "true").lower() if "header" in found else "false"
    if fmt_name not in ("text", "csv") or header_text not in _TRUE | _FALSE:
        return None
    try:
        fmt = CopyFormat(csv=fmt_name == "csv", delimiter=found.get("delimiter"))
    except SpecError:
        return None  # the coordinator reports a bad delimiter
    null = found.get("null")
    return CopyOptions(fmt, header_text in _TRUE, null)


def copy_is_neutral(stmt: ast.Node) -> bool:
    """COPY of a table from STDIN or to STDOUT without WHERE (which may call any function) changes no
    session state."""
    return (isinstance(stmt, ast.CopyStmt) and stmt.relation is not None and stmt.query is None
            and stmt.filename is None and not stmt.is_program and stmt.whereClause is None)


def _resolve(sql_text: str, topology: RoutingTopology, search_path: tuple[str, ...], node: ast.RangeVar) -> RoutedTable | None:
    if node.catalogname:
        return None
    try:
        return _Analyzer(sql_text, topology, search_path, frozenset()).resolve(node)
    except Refuse:
        return None


def plan_copy(stmt: ast.Node, sql_text: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> MultiShard | None:
    if not copy_is_neutral(stmt):
        return None
    assert isinstance(stmt, ast.CopyStmt) and stmt.relation is not None
    table = _resolve(sql_text, topology, search_path, stmt.relation)
    if table is None or table.is_reference or table.key is None or not table.shards:
        return None
    options = copy_options(stmt.options)
    if options is None:
        return None
    columns = tuple(str(c.sval) for c in stmt.attlist or () if isinstance(c, ast.String))
    if len(columns) != len(stmt.attlist or ()) or len(set(columns)) != len(columns) \
            or any(c not in table.columns for c in columns):
        return None  # the coordinator names the unknown or repeated column
    shards = tuple(sorted(table.shards, key=lambda s: s.index))
    column_list = sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, columns))) if columns else sql.SQL("")
    if stmt.is_from:
        if columns and set(columns) != set(table.columns):
            return None  # the coordinator fills the defaults of the columns left out
        statements = tuple(sql.SQL("COPY {}{} FROM STDIN ({})").format(
            sql.Identifier(s.shard_schema, s.shard_table), column_list, options.composed()).as_string(None)
            for s in shards)
        return CopyIn(table=table, shards=shards, statements=statements, columns=columns, options=options,
                      original=sql_text, coordinator=topology.coordinator)
    statements = tuple(sql.SQL("COPY {}{} TO STDOUT ({})").format(
        sql.Identifier(s.shard_schema, s.shard_table), column_list, options.composed()).as_string(None)
        for s in shards)
    header = None
    if options.header:
        first = shards[0]
        selected = sql.SQL(", ").join(map(sql.Identifier, columns)) if columns else sql.SQL("*")
        header = sql.SQL("COPY (SELECT {} FROM {} LIMIT 0) TO STDOUT ({})").format(
            selected, sql.Identifier(first.shard_schema, first.shard_table), options.composed(header=True)).as_string(None)
    return CopyOut(table=table, shards=shards, statements=statements, header=header)
