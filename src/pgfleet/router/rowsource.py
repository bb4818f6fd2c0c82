"""``INSERT … SELECT`` into a distributed table that the router cannot pair shard by shard: the router gets the
selected rows first and inserts them as a VALUES list, which then goes to the rows' shards like any multi-row
INSERT (pure but for :func:`evaluate_rows`).

* A SELECT that reads no table — constants, casts, ``unnest``, ``generate_series`` — is how ORMs insert many
  rows at once: Django's ``bulk_create`` sends ``INSERT INTO t (a, b) SELECT * FROM UNNEST((%s)::bigint[],
  (%s)::varchar[]) RETURNING id``. It is evaluated on a pooled coordinator connection outside the session's
  transaction, which is the same as inside: it reads nothing. This works in autocommit and inside router
  transactions.
* A SELECT that reads tables (another co-location group, a key computed from the row, reference and local
  tables, joins, subqueries, aggregates): in autocommit only (inside a transaction it would not see the
  transaction's own writes), on a pooled coordinator connection in a read-only transaction under the client's
  role, so that it reads what the client may read and changes nothing. Only built-in functions without side
  effects (``SAFE_FUNCTIONS``) are allowed; no row locks, no ``current_user`` and the like (the pooled
  session's answer would differ).

Either way the rows come back as text in the session's settings and go into the VALUES list as quoted
literals cast to the SELECT columns' types, which the columns' input functions read as the SELECT's values
would have been assigned. The multi-row INSERT returns its RETURNING rows in the VALUES order
(:mod:`.shardwrite`), which ORMs rely on to give each object its id; a key left to its sequence is drawn as for
any INSERT (:mod:`.keyfill`). More than ``MAX_ROWS`` rows, an error, or no row at all: the statement goes to the
coordinator as it came (which reports the error in its own words)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import logging

from pglast import ast
from pglast.enums import SetOperation
from psycopg import sql

from . import protocol as p
from . import wire
from .backend import BackendError
from .identity import insert_refusal
from .keyfill import parsed_insert
from .pool import Leases
from .rewrite import qualified, scanned_tokens
from .snapshot import RoutingTopology
from .walk import SAFE_FUNCTIONS, function_name, walk

log = logging.getLogger(__name__)

MAX_ROWS = 5000  # more rows than that: the coordinator runs the statement, as before
_CONSTANT_FUNCTIONS = frozenset({"unnest", "generate_series"})  # in SAFE_FUNCTIONS: built-in, without side effects
_NEVER = (ast.SQLValueFunction, ast.LockingClause, ast.IntoClause, ast.CurrentOfExpr)  # the pooled session's answer
_READS = (ast.RangeVar, ast.SubLink, ast.WithClause, ast.JoinExpr, ast.RangeTableSample, ast.GroupingSet, ast.WindowDef)


@dataclass(frozen=True)
class RowSource:
    head: str  # the statement up to its SELECT: "INSERT INTO t (a, b) "
    select: str  # the SELECT, to evaluate
    tail: str  # what follows it: ON CONFLICT …, RETURNING …
    columns: int  # how many values each row must have
    reads: bool = False  # the SELECT reads tables (or aggregates): got only in autocommit, as the client's role
    untyped: tuple[bool, ...] = ()  # per column: a string constant of the SELECT's own list (type unknown)

    def insert_with(self, rows: Sequence[Sequence[str | None]], types: Sequence[str]) -> str:
        """The statement with ``rows`` (text values, None for NULL) as a VALUES list, each value cast to its
        SELECT column's type (``types``, as format_type names them), so that PostgreSQL assigns them to the
        columns as it would the SELECT's values (and refuses what it would refuse). A column that the SELECT
        gives as a string constant stays a constant without a type, which the column's type reads, as the
        INSERT of that SELECT does (``SELECT g, '2024-01-01'`` into a date column)."""
        casts = [f"::{t}" for t in types]
        for i, untyped in enumerate(self.untyped[:len(casts)]):
            casts[i] = "" if untyped else casts[i]
        values = ", ".join("(" + ", ".join(f"{'NULL' if v is None else sql.Literal(v).as_string()}{cast}"
                                           for v, cast in zip(row, casts, strict=True)) + ")" for row in rows)
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
    if table is None or table.is_reference \
            or insert_refusal(table, [str(c.name) for c in stmt.cols], (), stmt.override) is not None:
        return None  # the rows' INSERT would go to the coordinator as well
    if any(isinstance(node, ast.ParamRef) for node in walk([stmt.onConflictClause, stmt.returningClause])):
        return None  # the rows' statement carries no parameter
    reads = select_reads(select)
    if reads is None:
        return None
    span = select_span(text, relation.location or 0)
    if span is None:
        return None
    start, end = span
    return RowSource(text[:start], text[start:end], text[end:], len(stmt.cols), reads, untyped_constants(select))


def untyped_constants(select: ast.SelectStmt) -> tuple[bool, ...]:
    """Per column of ``select``'s own list, whether it is a string constant without a cast (its type is
    unknown until the INSERT assigns it); () when the columns cannot be told apart (``*``, UNION, …)."""
    targets = select.targetList or ()
    if select.op != SetOperation.SETOP_NONE or any(
            isinstance(t.val, ast.ColumnRef) and isinstance((t.val.fields or (None,))[-1], ast.A_Star) for t in targets):
        return ()
    return tuple(isinstance(t.val, ast.A_Const) and isinstance(t.val.val, ast.String) for t in targets)


def select_reads(select: ast.SelectStmt) -> bool | None:
    """Whether ``select`` reads tables (or aggregates), which a pooled coordinator connection may answer as the
    client's session would only in autocommit; None when another session's answer could differ: row locks,
    ``current_user`` and the like, a function not known to be without side effects."""
    reads = False
    for node in walk(select):
        if isinstance(node, _NEVER):
            return None
        reads = reads or isinstance(node, _READS)
        if isinstance(node, ast.FuncCall):
            name = function_name(node)
            if name not in SAFE_FUNCTIONS:
                return None
            reads = reads or name not in _CONSTANT_FUNCTIONS or node.over is not None
    return reads


def select_span(text: str, relation_at: int) -> tuple[int, int] | None:
    """Where the SELECT of the INSERT whose table name starts at ``relation_at`` starts and ends: its first
    SELECT keyword outside parentheses after the name (and column list), up to the first ON CONFLICT (not a
    join's ON), RETURNING or ';' outside parentheses, or the end; None when VALUES, WITH, TABLE, DEFAULT or
    a parenthesized query comes instead."""
    tokens = [t for t in scanned_tokens(text) if t[0] > relation_at]
    depth, start = 0, None
    for n, (token_start, _, name) in enumerate(tokens):
        depth += (name == "ASCII_40") - (name == "ASCII_41")
        if start is None:
            if name == "SELECT" and depth == 0:
                start = token_start
            elif name in ("VALUES", "WITH", "TABLE", "DEFAULT") and depth == 0:
                return None
        elif depth == 0 and (name in ("RETURNING", "ASCII_59")
                             or (name == "ON" and n + 1 < len(tokens) and tokens[n + 1][2] == "CONFLICT")):
            return start, token_start
    return (start, len(text)) if start is not None else None


@dataclass(frozen=True)
class Rows:
    values: list[list[str | None]]  # text, None for NULL
    types: list[str]  # each column's type, as format_type names it


async def evaluate_rows(leases: Leases, coordinator: str, source: RowSource, type_names: dict[int, str],
                        role: str | None = None, bind: p.Bind | None = None,
                        param_types: tuple[int, ...] = ()) -> Rows | None:
    """The rows of ``source``'s SELECT and their columns' types, from a pooled coordinator connection leased
    for that one Query — with the client's ``bind`` values of ``$n`` parameters (extended protocol) when
    given; ``type_names``: the names of type oids known already (a type seen first costs one more Query).
    A SELECT that reads tables runs as ``role`` (None: the login) in a read-only transaction, at most
    ``MAX_ROWS`` + 1 rows of it. None when they cannot be had or do not fit (an error, no row, too many rows,
    another number of values than the column list): the statement then goes as it came."""
    select = source.select
    first: list[str] = []  # statements before the SELECT, and after it
    last: list[str] = []
    if source.reads:
        select = f"SELECT * FROM (\n{select}\n) AS _pgfleet_rows LIMIT {MAX_ROWS + 1}"
        as_role = [f"SET LOCAL ROLE {qualified(role)}"] if role is not None else []
        # a Query's statements share an implicit transaction that SET TRANSACTION applies to; the extended
        # protocol's needs a block (after an error it is left failed, and the pool closes the connection)
        first, last = (["SET TRANSACTION READ ONLY", *as_role], []) if bind is None else \
            (["BEGIN READ ONLY", *as_role], ["COMMIT"])
    try:
        if bind is None:  # the newline ends a -- comment
            reply = await leases.exchange_once(coordinator, "".join(f"{s};\n" for s in first) + f"{select}\n")
        else:
            reply = await leases.roundtrip_once(coordinator, b"".join((
                *map(unnamed, first),
                p.Parse("", select, param_types).encode(),
                p.Bind("", "", bind.param_formats, bind.params, ()).encode(),
                p.Describe("P", "").encode(), p.Execute("", 0).encode(),
                *map(unnamed, last), p.Sync().encode())))
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


def unnamed(statement: str) -> bytes:
    """``statement`` (without parameters or result) as the unnamed statement: Parse, Bind, Execute."""
    return p.Parse("", statement, ()).encode() + p.Bind("", "", (), (), ()).encode() + p.Execute("", 0).encode()
