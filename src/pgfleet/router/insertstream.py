"""``INSERT INTO dist_table [(cols)] SELECT …`` of any number of rows, in autocommit, run by the router: the
coordinator streams the selected rows (``COPY (SELECT …) TO STDOUT`` on a pooled connection, in a read-only
transaction under the client's role), and the router sends them to their shards as it sends a client's
``COPY FROM STDIN`` (:mod:`.copyin`: only the key field of each record is read, the nodes insert while the
next chunk comes, one node commits alone, several with two-phase commit). Through the coordinator the same
statement goes through postgres_fdw in batches and commits node by node.

Taken only when the text round trip is exact: every column of the table but generated ones gets a value
from the SELECT, each of the SELECT's types is the column's (or one whose text the column reads as the
INSERT would assign it: a smaller integer, text into varchar and back, an integer into numeric), and a
string constant of the SELECT's own list (type unknown) is read by the column's type, as the INSERT does.
No RETURNING, ON CONFLICT or WITH, no parameters, only built-in functions without side effects (the rows are
read on another connection: :func:`.rowsource.select_reads`). When the SELECT's types do not allow it, the
data cannot be split by key here, or nothing can start, the statement goes to the coordinator as it came;
an error of the SELECT or of a shard reaches the client as one server words it, with nothing inserted."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from pglast import ast, enums
from psycopg import sql

from . import protocol as p
from . import wire
from ..copyroute import ShardTargets
from ..copytext import CannotSplit, CopyFormat
from ..topology.model import Shard
from .backend import BackendError, WorkerConnection
from .copyin import HIGH_WATER, CopyDataBuffer, CopyIn, _Load
from .copyplan import CopyOptions, _resolve
from .identity import insert_refusal
from .multishard import MultiShardHost
from .rewrite import qualified
from .routes import MultiShard
from .rowsource import select_reads, select_span, unnamed, untyped_constants
from .shardcopy import begin_everywhere, open_nodes, rollback
from .snapshot import RoutedTable, RoutingTopology
from .twophase import first_error
from .walk import walk

log = logging.getLogger(__name__)

# (the SELECT's type, the column's type) whose text the column reads as the INSERT assigns the value
_EXACT_TEXT = frozenset({(21, 23), (21, 20), (23, 20), (25, 1043), (1043, 25), (21, 1700), (23, 1700), (20, 1700)})
_TEXT = 25
_HEADER = struct.Struct("!I")
_OPTIONS = CopyOptions(CopyFormat(csv=False, delimiter=None), False, None)
_ATTRIBUTES = ("SELECT attname, atttypid::bigint, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = {}"
               "::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum")


@dataclass(frozen=True, eq=False)
class InsertStream(MultiShard):
    description = "INSERT … SELECT"
    writes = True

    table: RoutedTable
    shards: tuple[Shard, ...]
    columns: tuple[str, ...]  # as the client named them; () = the table's columns in order
    select: str  # the SELECT, as the client wrote it
    untyped: tuple[bool, ...]  # per column: a string constant of the SELECT's own list
    original: str
    coordinator: str

    async def run(self, host: MultiShardHost) -> bytes | None:
        nodes = list(dict.fromkeys(s.node for s in self.shards))
        if len(nodes) > 1 and host.twophase is None:
            return None
        try:
            source = await host.worker(self.coordinator)
        except BackendError:
            return None
        prepared = await self._prepare(host, source)
        if prepared is None:
            return None
        copy_sql, columns = prepared
        try:
            return await self._load(host, source, copy_sql, columns)
        finally:
            await _finish_source(host, self.coordinator, source)

    async def _prepare(self, host: MultiShardHost, source: WorkerConnection) -> tuple[str, tuple[str, ...]] | None:
        """Begin the read-only transaction on the coordinator, learn the SELECT's and the table's column types:
        (the COPY TO statement of the rows, the columns they fill), or None (rolled back: the coordinator runs
        the statement as it came)."""
        role = host.role_on(source)
        attributes = sql.SQL(_ATTRIBUTES).format(sql.Literal(qualified(self.table.schema, self.table.relname)))
        first = ["BEGIN READ ONLY", *([f"SET LOCAL ROLE {qualified(role)}"] if role != source.user else []),
                 attributes.as_string(None)]  # one Sync: a Query's ReadyForQuery would end the exchange
        request = b"".join((*map(unnamed, first), p.Parse("", self.select, ()).encode(), p.Describe("S", "").encode(),
                            p.Sync().encode()))
        try:
            reply = await source.roundtrip(request)
        except BackendError:
            host.drop_worker(self.coordinator)
            return None
        table: list[tuple[str, int, str]] = []
        selected: tuple[int, ...] | None = None
        for type_byte, payload in wire.Framer().feed(reply):
            message = p.decode_backend(type_byte, payload) if type_byte in b"ETD" else None
            if isinstance(message, p.ErrorResponse):
                selected = None
                break
            if isinstance(message, p.DataRow) and None not in message.values:
                name, oid, type_name = (v.decode() for v in message.values if v is not None)
                table.append((name, int(oid), type_name))
            if isinstance(message, p.RowDescription):
                selected = tuple(f.type_oid for f in message.fields)
        planned = None if selected is None else self._copy_out(table, selected)
        if planned is None:
            log.info("INSERT … SELECT into %s goes to the coordinator: %s", self.table.name,
                     "the SELECT's columns do not fill the table's with their own text" if selected is not None
                     else "the coordinator could not describe the SELECT")
            await _finish_source(host, self.coordinator, source)
        return planned

    def _copy_out(self, table: list[tuple[str, int, str]], selected: tuple[int, ...]) -> tuple[str, tuple[str, ...]] | None:
        """The COPY TO statement whose text the shards read as the INSERT would assign the SELECT's values,
        and the columns it fills; None when that cannot be had."""
        types = {name: (oid, type_name) for name, oid, type_name in table}
        columns = self.columns or tuple(name for name, _, _ in table)[:len(selected)]
        if len(columns) != len(selected) or set(columns) != set(types) or str(self.table.key) not in columns:
            return None  # a column left to its default, or a generated one named: the coordinator
        exprs: list[str] = []
        cast = False
        for i, (column, oid) in enumerate(zip(columns, selected, strict=True)):
            target, type_name = types[column]
            name = qualified(f"_pgfleet_c{i + 1}")
            if i < len(self.untyped) and self.untyped[i] and oid == _TEXT and target != _TEXT:
                exprs.append(f"{name}::{type_name}")  # a string constant: the column's type reads it
                cast = True
            elif oid == target or (oid, target) in _EXACT_TEXT:
                exprs.append(name)
            else:
                return None
        if not cast:
            return f"COPY (\n{self.select}\n) TO STDOUT", columns
        aliases = ", ".join(qualified(f"_pgfleet_c{i + 1}") for i in range(len(columns)))
        return f"COPY (SELECT {', '.join(exprs)} FROM (\n{self.select}\n) AS _pgfleet_rows ({aliases})) TO STDOUT", columns

    async def _load(self, host: MultiShardHost, source: WorkerConnection, copy_sql: str,
                    columns: tuple[str, ...]) -> bytes | None:
        try:
            targets = ShardTargets(self.table.method, self.shards, self.table.key_type)
        except CannotSplit:
            return None
        conns = await open_nodes(host, list(dict.fromkeys(s.node for s in self.shards)))
        if conns is None or not await begin_everywhere(host, conns, "BEGIN"):
            return None
        column_list = sql.SQL(", ").join(map(sql.Identifier, columns))
        statements = tuple(sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
            sql.Identifier(s.shard_schema, s.shard_table), column_list, _OPTIONS.composed()).as_string(None)
            for s in self.shards)
        plan = CopyIn(table=self.table, shards=self.shards, statements=statements, columns=columns, options=_OPTIONS,
                      original=self.original, coordinator=self.coordinator)
        rows = SelectedRows(source)
        try:
            source.stream(p.Query(copy_sql).encode(), rows.sink, bulk=b"d")
        except BackendError:
            await rollback(host, conns)
            return None
        try:
            return await _InsertLoad(plan, host, conns, rows, targets, columns.index(str(self.table.key))).run()
        except _NotHere:
            return None
        except Exception:  # a bug: no node's transaction may stay open on the session's connections
            await rollback(host, conns)
            raise


async def _finish_source(host: MultiShardHost, node: str, source: WorkerConnection) -> None:
    """End the read-only transaction; a connection still streaming or broken is dropped."""
    if not source.reusable and source.status in (b"T", b"E"):
        try:
            reply = await source.exchange("ROLLBACK")
            if first_error(reply) is None:
                return
        except BackendError:
            pass
    if not source.reusable:
        host.drop_worker(node)


class SelectedRows(CopyDataBuffer):
    """The coordinator's COPY TO output as the router's COPY FROM reads a client's data (``take``, ``end``:
    done, fail — the SELECT's error — or lost): the CopyData payloads, the reading of the coordinator paused
    while enough is buffered."""

    def __init__(self, source: WorkerConnection) -> None:
        super().__init__()
        self.source = source
        self.error: bytes | None = None

    def sink(self, messages: bytes | None, marks: list[tuple[bytes, int, int]], last: bool) -> None:
        if messages is None:
            self.end = self.end or "lost"
        else:
            view, pos = memoryview(messages), 0
            for type_byte, start, stop in marks:
                self._payloads(view, pos, start)
                if type_byte == b"E" and self.error is None:
                    self.error = bytes(view[start:stop])
                pos = stop
            self._payloads(view, pos, len(messages))
            if last:
                self.end = "fail" if self.error is not None else "done"
            elif self.size >= HIGH_WATER and not self.paused:
                self.paused = True
                self.source.pause(True)
        self._wake()

    def _payloads(self, view: memoryview, pos: int, stop: int) -> None:
        """The payloads of the CopyData messages in ``view[pos:stop]`` (nothing else lies there)."""
        unpack, append, size = _HEADER.unpack_from, self.parts.append, 0
        while pos < stop:
            end = pos + 1 + unpack(view, pos + 1)[0]
            append(view[pos + 5:end])
            size += end - pos - 5
            pos = end
        self.size += size

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            self.source.pause(False)

    async def drain(self) -> None:
        """Nothing to read to the end: the source's connection is dropped unless it finished."""
        self.parts, self.size = [], 0


class _NotHere(Exception):
    """The data cannot be split here: everything was rolled back, the coordinator runs the statement."""


class _InsertLoad(_Load):
    replays = False  # nothing to replay: the coordinator runs the INSERT itself

    def tag(self) -> str:
        return f"INSERT 0 {self.rows}"

    async def _via_coordinator(self, why: str) -> bytes:
        await self._stop()
        log.info("INSERT … SELECT into %s goes to the coordinator: %s", self.plan.table.name, why)
        raise _NotHere(why)

    async def _failed(self, error: bytes) -> bytes:
        """A shard refused rows: its error without the COPY's CONTEXT (the client sent an INSERT)."""
        await self._stop()
        message = p.decode_backend(b"E", error[5:])
        if isinstance(message, p.ErrorResponse):
            error = p.ErrorResponse(tuple(f for f in message.fields if f[0] != "W")).encode()
        return error + p.ReadyForQuery("I").encode()

    async def _abandon(self) -> bytes:
        """The SELECT failed on the coordinator (its error, as it sent it) or the connection to it broke."""
        await self._stop()
        reader = self.reader
        assert isinstance(reader, SelectedRows)
        if reader.error is not None:
            return reader.error + p.ReadyForQuery("I").encode()
        return p.error_response("08006", "pgfleet router: the connection to the coordinator was lost during INSERT … "
                                "SELECT; nothing was inserted", severity="ERROR",
                                hint="retry the statement").encode() + p.ReadyForQuery("I").encode()


def plan_insert_stream(stmt: ast.Node, sql_text: str, topology: RoutingTopology,
                       search_path: tuple[str, ...]) -> InsertStream | None:
    """An :class:`InsertStream` for ``INSERT INTO dist_table [(cols)] SELECT …`` (pure), else None."""
    if not isinstance(stmt, ast.InsertStmt) or stmt.withClause is not None or stmt.onConflictClause is not None \
            or stmt.returningClause or stmt.relation is None or not topology.coordinator \
            or stmt.override == enums.OverridingKind.OVERRIDING_USER_VALUE:
        return None
    select = stmt.selectStmt
    if not isinstance(select, ast.SelectStmt) or select.valuesLists or select.intoClause is not None \
            or any(isinstance(node, ast.ParamRef) for node in walk([select])) or select_reads(select) is None:
        return None
    table = _resolve(sql_text, topology, search_path, stmt.relation)
    if table is None or table.is_reference or table.key is None or not table.shards:
        return None
    columns = tuple(str(c.name) for c in stmt.cols or ())
    if any(c.indirection for c in stmt.cols or ()) or len(set(columns)) != len(columns) \
            or any(c not in table.columns for c in columns) or (columns and str(table.key) not in columns) \
            or insert_refusal(table, columns or table.columns, (), stmt.override) is not None:
        return None
    span = select_span(sql_text, stmt.relation.location or 0)
    if span is None:
        return None
    return InsertStream(table=table, shards=tuple(sorted(table.shards, key=lambda s: s.index)), columns=columns,
                        select=sql_text[span[0]:span[1]], untyped=untyped_constants(select), original=sql_text,
                        coordinator=topology.coordinator)
