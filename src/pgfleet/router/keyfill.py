"""An INSERT into a distributed table that leaves the distribution key to its sequence (an identity column, a
``serial``): the router takes the keys from the coordinator's sequence first and writes them into the
statement, which then goes to the shards of its rows like any INSERT that gives its key (pure but for
:func:`draw_keys`).

Without this such an INSERT — every ``Model.objects.create()`` of Django, every ``session.add()`` of an
identity model — could only run on the coordinator, whose partitioned table computes the default: through
postgres_fdw in autocommit, and refused (``0A000``) in a router transaction that wrote on a worker.

The keys are what the coordinator's INSERT would have drawn, from the same sequence: ``nextval`` of it,
once per row and in row order (:func:`next_keys_sql`), so later INSERTs on the coordinator continue after
them (a busy sequence is drawn ahead, as a sequence's ``CACHE`` does: :mod:`.keycache`). The statement
gets the key column first in its column list and each row's key first in its row
(:meth:`KeyFill.sql_with`); for a ``GENERATED ALWAYS`` identity also ``OVERRIDING SYSTEM VALUE``, which is
what PostgreSQL requires to give such a column (shards have plain columns, which accept the clause too).

Privileges stay as on one server: a session that is not a superuser gets keys only when its role may
INSERT into the key column and, for a ``serial`` (a default that calls ``nextval``), may use the sequence
(an identity needs neither); otherwise no key is drawn and the statement goes its usual way, where
PostgreSQL answers in its own words."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from psycopg import sql

from . import protocol as p
from . import wire
from .backend import BackendError
from .keycache import KeyCache
from .pool import Leases
from .rewrite import Edit, scanned_tokens, apply_edits, qualified, values_rows
from .snapshot import RoutedTable, RoutingTopology

log = logging.getLogger(__name__)

MAX_ROWS = 1000  # more rows than that: the coordinator computes the keys, as before
KEY_TYPE_OIDS = {"smallint": 21, "integer": 23, "bigint": 20}  # a key drawn into a $n parameter is of its column's type


@dataclass(frozen=True)
class KeyFill:
    """Where the keys go into one INSERT statement."""

    table: RoutedTable
    rows: int
    column_at: int  # where the key's name goes in the column list
    row_starts: tuple[int, ...]  # where each row's key goes (after its '(')
    values_at: int  # where the VALUES keyword starts (OVERRIDING SYSTEM VALUE goes before it)

    def sql_with(self, text: str, keys: Sequence[int]) -> str:
        """``text`` with ``keys`` (one per row, in order) as the rows' distribution key."""
        if len(keys) != self.rows:
            raise ValueError(f"{self.rows} rows, {len(keys)} keys")
        return self._edited(text, [str(int(key)) for key in keys])

    def sql_with_parameters(self, text: str, first: int) -> str:
        """``text`` with parameters ``$first``, ``$first + 1``, … as the rows' distribution key (extkeys.py)."""
        return self._edited(text, [f"${first + i}" for i in range(self.rows)])

    def _edited(self, text: str, keys: list[str]) -> str:
        edits = [Edit(self.column_at, self.column_at, f"{qualified(self.table.key)}, ")]
        edits += [Edit(at, at, f"{key}, ") for at, key in zip(self.row_starts, keys, strict=True)]
        if self.table.key_identity == "a":
            edits.append(Edit(self.values_at, self.values_at, "OVERRIDING SYSTEM VALUE "))
        return apply_edits(text, edits)


def parsed_insert(text: str) -> ast.InsertStmt | None:
    """``text`` parsed when it is one INSERT statement; None for anything else (cheaply for most)."""
    if text.lstrip()[:6].upper() != "INSERT":
        return None
    try:
        stmts = parse_sql(text)
    except ParseError:
        return None
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.InsertStmt):
        return None
    return stmts[0].stmt


def key_fill(text: str, topology: RoutingTopology, search_path: tuple[str, ...],
             stmt: ast.InsertStmt | None = None) -> KeyFill | None:
    """The INSERT ``text`` (``stmt`` when parsed already) as a :class:`KeyFill` when it inserts VALUES rows
    into a distributed table whose key comes from a sequence, without giving the key; None for anything else."""
    stmt = stmt if stmt is not None else parsed_insert(text)
    if stmt is None:
        return None
    relation = stmt.relation
    if stmt.withClause is not None or relation is None or relation.catalogname or not stmt.cols \
            or stmt.override != enums.OverridingKind.OVERRIDING_NOT_SET:
        return None
    schema = topology.schema_of(relation.schemaname, relation.relname or "", search_path)
    table = topology.table(schema, relation.relname or "") if schema is not None else None
    if table is None or table.is_reference or not table.key_sequence or table.key_type not in KEY_TYPE_OIDS:
        return None
    if any(c.name == table.key for c in stmt.cols):
        return None
    select = stmt.selectStmt
    if not isinstance(select, ast.SelectStmt) or not select.valuesLists or select.fromClause \
            or len(select.valuesLists) > MAX_ROWS:
        return None
    spans, _ = values_rows(text, relation.location or 0)
    if len(spans) != len(select.valuesLists):
        return None
    values_at = next((t[0] for t in scanned_tokens(text) if t[0] > (relation.location or 0) and t[2] == "VALUES"), None)
    if values_at is None:
        return None
    return KeyFill(table, len(spans), stmt.cols[0].location or 0, tuple(start + 1 for start, _ in spans), values_at)


def next_keys_sql(fill: KeyFill, role: str | None, count: int | None = None) -> str:
    """What the coordinator runs for ``count`` keys (default: one per row of ``fill``): ``nextval`` of the key's
    sequence that many times, in order; for a session that is not a superuser (``role``), no row unless the
    role may give the key column and (for a ``serial``) use the sequence."""
    table = fill.table
    checks: list[sql.Composable] = []
    if role is not None:
        checks.append(sql.SQL("has_column_privilege({role}, {table}::regclass, {key}, 'INSERT')").format(
            role=sql.Literal(role), table=sql.Literal(table.oid), key=sql.Literal(table.key)))
        if not table.key_identity:
            checks.append(sql.SQL("has_sequence_privilege({role}, {seq}::regclass, 'USAGE, UPDATE')").format(
                role=sql.Literal(role), seq=sql.Literal(table.key_sequence)))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(checks) if checks else sql.SQL("")
    return sql.SQL("SELECT nextval({seq}::regclass) FROM generate_series(1, {n}) AS g{where} ORDER BY g").format(
        seq=sql.Literal(table.key_sequence), n=sql.Literal(count or fill.rows), where=where).as_string()


def cached_keys(cache: KeyCache, fill: KeyFill, role: str | None) -> list[int] | None:
    """The keys of ``fill``'s rows from the process's cache (:mod:`.keycache`), at once; None: draw them."""
    return cache.take(fill.table.key_sequence, fill.rows, role, fill.table.oid)


async def draw_keys(leases: Leases, coordinator: str, cache: KeyCache, fill: KeyFill,
                    role: str | None) -> list[int] | None:
    """The keys of ``fill``'s rows: from ``cache`` when it has them, else from the coordinator's sequence
    (:func:`next_keys_sql`; more when the sequence is busy, kept in ``cache``) on a pooled connection leased
    for that one Query; None when none came (no privilege, no connection)."""
    cached = cached_keys(cache, fill, role)
    if cached is not None:
        return cached
    table = fill.table
    count = cache.block(table.key_sequence, fill.rows)
    try:
        reply = await leases.exchange_once(coordinator, next_keys_sql(fill, role, count))
    except BackendError as exc:
        log.warning("no keys from the coordinator's sequence, the INSERT goes as it came: %s", exc)
        return None
    rows = [p.decode_backend(t, body) for t, body in wire.Framer().feed(reply) if t == b"D"]
    keys = [int(r.values[0]) for r in rows if isinstance(r, p.DataRow) and r.values[0] is not None]
    if len(keys) != count:
        return None
    return cache.drawn(table.key_sequence, keys, fill.rows, role, table.oid)
