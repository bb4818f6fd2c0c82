"""``INSERT … SELECT`` whose SELECT reads no table — only constants, casts and ``unnest`` of them: the
router gets the rows first and inserts them as a VALUES list, which then goes to the rows' shards like any
multi-row INSERT (pure but for :func:`evaluate_rows`).

This is how ORMs insert many rows at once: Django's ``bulk_create`` sends ``INSERT INTO t (a, b) SELECT *
FROM UNNEST((%s)::bigint[], (%s)::varchar[]) RETURNING id``. Without this such a statement could only run
on the coordinator: through postgres_fdw in autocommit, and refused inside a router transaction that wrote
on a worker.

The SELECT is evaluated on a pooled coordinator connection outside the session's transaction, which is
the same as evaluating it inside: it reads nothing and calls nothing but ``unnest`` (:func:`row_source`
refuses anything else). Its rows come back as text in the session's settings and go into the VALUES list
as quoted literals, which the columns' input functions read as the SELECT's values would have been
assigned (the casts ORMs write are the columns' own types). The multi-row INSERT then returns its
RETURNING rows in the VALUES order (:mod:`.shardwrite`), which ORMs rely on to give each object its id; a
key left to its sequence is drawn as for any INSERT (:mod:`.keyfill`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import logging

from pglast import ast
from psycopg import sql

from . import protocol as p
from . import wire
from .backend import BackendError
from .keyfill import parsed_insert
from .pool import Leases
from .rewrite import scanned_tokens
from .snapshot import RoutingTopology
from .walk import function_name, walk

log = logging.getLogger(__name__)

MAX_ROWS = 5000  # more rows than that: the coordinator runs the statement, as before
_ALLOWED_FUNCTIONS = frozenset({"unnest"})
_FORBIDDEN = (ast.RangeVar, ast.SubLink, ast.SQLValueFunction, ast.WithClause, ast.LockingClause,
              ast.IntoClause, ast.JoinExpr, ast.CurrentOfExpr, ast.RangeTableSample, ast.GroupingSet, ast.WindowDef)


@dataclass(frozen=True)
class RowSource:
    head: str  # the statement up to its SELECT: "INSERT INTO t (a, b) "
    select: str  # the SELECT, to evaluate
    tail: str  # what follows it: ON CONFLICT …, RETURNING …
    columns: int  # how many values each row must have

    def insert_with(self, rows: Sequence[Sequence[str | None]], types: Sequence[str]) -> str:
        """The statement with ``rows`` (text values, None for NULL) as a VALUES list, each value cast to its
        SELECT column's type (``types``, as format_type names them), so that PostgreSQL assigns them to the
        columns as it would the SELECT's values (and refuses what it would refuse)."""
        values = ", ".join("(" + ", ".join(f"{'NULL' if v is None else sql.Literal(v).as_string()}::{t}"
                                           for v, t in zip(row, types, strict=True)) + ")" for row in rows)
        return f"{self.head}VALUES {values}{self.tail}"


def row_source(text: str, topology: RoutingTopology, search_path: tuple[str, ...],
               stmt: ast.InsertStmt | None = None) -> RowSource | None:
    """``text`` (``stmt`` when parsed already) as a :class:`RowSource` when it is one INSERT into a distributed
    table, with a column list, of a SELECT that reads no table and calls no function but ``unnest``; None for
    anything else."""
    stmt = stmt if stmt is not None else parsed_insert(text)
    if stmt is None:
        return None
    relation, select = stmt.relation, stmt.selectStmt
    if stmt.withClause is not None or relation is None or relation.catalogname or not stmt.cols \
            or not isinstance(select, ast.SelectStmt) or select.valuesLists or not select.fromClause:
        return None
    schema = topology.schema_of(relation.schemaname, relation.relname or "", search_path)
    table = topology.table(schema, relation.relname or "") if schema is not None else None
    if table is None or table.is_reference:
        return None
    if any(isinstance(node, ast.ParamRef) for node in walk([stmt.onConflictClause, stmt.returningClause])):
        return None  # the rows' statement carries no parameter
    for node in walk(select):
        if isinstance(node, _FORBIDDEN):
            return None
        if isinstance(node, ast.FuncCall) and (function_name(node) not in _ALLOWED_FUNCTIONS or node.over is not None):
            return None
    span = _select_span(text, stmt.cols[-1].location or 0)
    if span is None:
        return None
    start, end = span
    return RowSource(text[:start], text[start:end], text[end:], len(stmt.cols))


def _select_span(text: str, after: int) -> tuple[int, int] | None:
    """Where the SELECT after the column list (whose last column starts at ``after``) starts and ends: at the
    first ON (CONFLICT), RETURNING or ';' outside parentheses, or at the end."""
    tokens = scanned_tokens(text)
    i = next((n for n, t in enumerate(tokens) if t[0] > after and t[2] == "ASCII_41"), None)  # the list's ')'
    if i is None or i + 1 >= len(tokens) or tokens[i + 1][2] != "SELECT":
        return None
    start, depth = tokens[i + 1][0], 0
    for token_start, _, name in tokens[i + 2:]:
        depth += (name == "ASCII_40") - (name == "ASCII_41")
        if depth == 0 and name in ("ON", "RETURNING", "ASCII_59"):
            return start, token_start
    return start, len(text)


@dataclass(frozen=True)
class Rows:
    values: list[list[str | None]]  # text, None for NULL
    types: list[str]  # each column's type, as format_type names it


async def evaluate_rows(leases: Leases, coordinator: str, source: RowSource, type_names: dict[int, str],
                        bind: p.Bind | None = None, param_types: tuple[int, ...] = ()) -> Rows | None:
    """The rows of ``source``'s SELECT and their columns' types, from a pooled coordinator connection leased
    for that one Query — with the client's ``bind`` values of ``$n`` parameters (extended protocol) when
    given; ``type_names``: the names of type oids known already (a type seen first costs one more Query).
    None when they cannot be had or do not fit (an error, no row, too many rows, another number of values
    than the column list): the statement then goes as it came."""
    try:
        if bind is None:
            reply = await leases.exchange_once(coordinator, f"{source.select}\n")  # the newline ends a -- comment
        else:
            reply = await leases.roundtrip_once(coordinator, b"".join((
                p.Parse("", source.select, param_types).encode(),
                p.Bind("", "", bind.param_formats, bind.params, ()).encode(),
                p.Describe("P", "").encode(), p.Execute("", 0).encode(), p.Sync().encode())))
        oids: tuple[int, ...] = ()
        values: list[list[str | None]] = []
        for type_byte, payload in wire.Framer().feed(reply):
            message = p.decode_backend(type_byte, payload) if type_byte in b"ETD" else None
            if isinstance(message, p.ErrorResponse):
                return None
            if isinstance(message, p.RowDescription):
                oids = tuple(f.type_oid for f in message.fields)
            if isinstance(message, p.DataRow):
                if len(message.values) != source.columns or len(values) >= MAX_ROWS:
                    return None
                values.append([None if v is None else v.decode() for v in message.values])
        if not values or len(oids) != source.columns:
            return None
        unknown = sorted({oid for oid in oids if oid not in type_names})
        if unknown:
            names = await leases.exchange_once(coordinator, "SELECT t::bigint, format_type(t, NULL) FROM unnest("
                                               f"ARRAY[{', '.join(map(str, unknown))}]::oid[]) AS t")
            for type_byte, payload in wire.Framer().feed(names):
                row = p.decode_backend(type_byte, payload) if type_byte == b"D" else None
                if isinstance(row, p.DataRow) and row.values[0] is not None and row.values[1] is not None:
                    type_names[int(row.values[0])] = row.values[1].decode()
        if any(oid not in type_names for oid in oids):
            return None
    except BackendError as exc:
        log.warning("could not evaluate the rows of an INSERT … SELECT, it goes as it came: %s", exc)
        return None
    return Rows(values, [type_names[oid] for oid in oids])
