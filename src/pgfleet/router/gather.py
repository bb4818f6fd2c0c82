"""Running a scatter/gather read (planned by :mod:`.scatter`): one query per node, all nodes concurrently,
under the client's role; then the shards' rows concatenated, or combined by one SQL statement over them
(aggregates: :mod:`.scatter_final`; ORDER BY: a merge of the shards' sort keys) on a worker
connection, so that types, NULLs and collation are PostgreSQL's.

A read has no side effects: when a node cannot be reached, refuses the client's role or privileges, or a
result type has no exact combine here, the plan returns None and the coordinator runs the statement
(and reports errors in its own words). Other errors of a shard reach the client as the worker sent them.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import protocol as p
from . import wire
from .backend import INSUFFICIENT_PRIVILEGE, BackendError, WorkerConnection
from .multishard import MultiShardHost
from .rewrite import qualified
from .logical import Renames, renamed
from .routes import MultiShard
from .rowstream import StreamedRead, fitting_description
from .scatter_final import AggregateFinal

_HEADER = struct.Struct("!cI")
_I32 = struct.Struct("!i")
_FIRST_NORMAL_OID = 16384  # built-in types have the same oids on every server
_ARRAY_TYPES: dict[int, int] = {}  # built-in element type oid -> its array type oid
READY = p.ReadyForQuery("I").encode()
MERGE_ROWS = 100_000  # rows of ORDER BY without LIMIT the router merges itself


@dataclass(frozen=True)
class NodeQuery:
    node: str
    sql: str  # the node's shards' queries, joined by UNION ALL
    shards: int


@dataclass(frozen=True)
class SortMerge:
    """ORDER BY over the shards' rows: (column index, ' COLLATE … DESC NULLS …') per sort key; negative
    indexes count from the end, over the ``hidden`` sort columns the shard query appends."""

    keys: tuple[tuple[int, str], ...]
    hidden: int


@dataclass(frozen=True)
class NodeReply:
    description: bytes  # RowDescription payload
    rows: bytes  # DataRow messages, as they came
    count: int
    error: bytes | None = None  # an ErrorResponse payload instead


@dataclass(frozen=True)
class ScatterRead(MultiShard):
    nodes: tuple[NodeQuery, ...]
    final: AggregateFinal | None = None  # aggregates: the combine over the partials
    merge: SortMerge | None = None  # plain rows with ORDER BY
    limit: int | None = None  # plain rows: LIMIT and OFFSET over the concatenation
    offset: int = 0
    renames: Renames | None = field(default=None, compare=False)  # a shard's error in the logical tables' terms
    text: str = field(default="", compare=False)  # the statement, for the coordinator's RowDescription

    description = "scatter/gather read"
    transactional = True

    async def run(self, host: MultiShardHost) -> bytes | None:
        return await self._run(host, fall_back=True)

    async def run_in_transaction(self, host: MultiShardHost) -> bytes | None:
        """The same reads on the transaction's connections: they see its writes (and, in REPEATABLE READ,
        its snapshot of each node); a refused privilege is the client's error here."""
        return await self._run(host, fall_back=False)

    async def _run(self, host: MultiShardHost, fall_back: bool) -> bytes | None:
        # meanwhile (not cancelled when not needed: it ends on its own within one round trip)
        described = asyncio.ensure_future(host.described(self.text)) if self.text else None
        if host.streaming and self.final is None and self.merge is None and self.limit is None:
            queries = [(q.node, q.sql) for q in self.nodes]
            return await StreamedRead(host, queries, self.renames, fall_back, described).run()
        return await with_description(await self._gather(host, fall_back), described)

    async def _gather(self, host: MultiShardHost, fall_back: bool) -> bytes | None:
        replies = await asyncio.gather(*(_run_node(host, q) for q in self.nodes))
        answered = [r for r in replies if r is not None]
        if len(answered) != len(replies):
            return None
        for reply in answered:
            if reply.error is not None:
                error = p.decode_backend(b"E", reply.error)
                if fall_back and isinstance(error, p.ErrorResponse) and error.sqlstate == INSUFFICIENT_PRIVILEGE:
                    return None  # the coordinator refuses it in its own words
                if isinstance(error, p.ErrorResponse) and self.renames is not None:
                    return p.ErrorResponse(renamed(error.fields, self.renames)).encode() + READY
                return wire.frame(b"E", reply.error) + READY
        if self.final is not None:
            return await self._aggregate(host, answered)
        if self.merge is not None:
            return await self._merge(host, answered, self.merge)
        return self._concatenate(answered)

    def _concatenate(self, replies: list[NodeReply]) -> bytes:
        if self.limit is None:
            count = sum(r.count for r in replies)
            body = [r.rows for r in replies]
        else:
            rows = [m for r in replies for m in data_rows(r.rows)][self.offset:self.offset + self.limit]
            count, body = len(rows), rows
        return b"".join((wire.frame(b"T", replies[0].description), *body, _complete(count), READY))

    async def _aggregate(self, host: MultiShardHost, replies: list[NodeReply]) -> bytes | None:
        assert self.final is not None
        types = [f.type_oid for f in _fields(replies[0].description)]
        if len(types) != self.final.width:
            return None
        text = self.final.sql(types)
        if text is None:
            return None
        values = [row_values(m) for r in replies for m in data_rows(r.rows)]
        reply = await _combine(host, self.nodes[0].node, text, types, values)
        if reply is None:
            return None
        return reply

    async def _merge(self, host: MultiShardHost, replies: list[NodeReply], merge: SortMerge) -> bytes | None:
        fields = _fields(replies[0].description)
        if sum(r.count for r in replies) > MERGE_ROWS:
            return None  # the coordinator sorts that many rows; one array parameter per sort key would not do
        rows = [m for r in replies for m in data_rows(r.rows)]
        values = [row_values(m) for m in rows]
        width = len(fields)
        columns = [i if i >= 0 else width + i for i, _ in merge.keys]
        keys = [f"_k{n}" for n in range(len(columns))]
        order = ", ".join(f"{k}{tail}" for k, (_, tail) in zip(keys, merge.keys, strict=True))
        text = (f"SELECT _o FROM unnest({', '.join(f'${n + 1}' for n in range(len(columns)))}) WITH ORDINALITY "
                f"AS _m ({', '.join(keys)}, _o) ORDER BY {order}, _o LIMIT {'ALL' if self.limit is None else self.limit} "
                f"OFFSET {self.offset}")
        types = [fields[c].type_oid for c in columns]
        reply = await _combine(host, self.nodes[0].node, text, types, [tuple(v[c] for c in columns) for v in values])
        if reply is None:
            return None
        messages = wire.Framer().feed(reply)
        if messages[0][0] == b"E":
            return reply
        order_numbers = [int(row_values(wire.frame(t, b))[0] or b"0") for t, b in messages if t == b"D"]
        visible = width - merge.hidden
        out = [rows[o - 1] if not merge.hidden else p.DataRow(tuple(values[o - 1][:visible])).encode()
               for o in order_numbers]
        description = replies[0].description if not merge.hidden else \
            p.RowDescription(fields[:visible]).payload()
        return b"".join((wire.frame(b"T", description), *out, _complete(len(out)), READY))


async def with_description(reply: bytes | None, described: asyncio.Future[bytes | None] | None) -> bytes | None:
    """``reply`` with its RowDescription replaced by the coordinator's (``described``) when that describes the
    same number of columns of the same types: then the table oids, attribute numbers and type modifiers are
    what one server gives, where a result put together from the shards has none (or a shard's)."""
    if reply is None or described is None or reply[:1] != b"T":
        return reply
    end = 1 + int.from_bytes(reply[1:5], "big")
    description = fitting_description(reply[5:end], await described)
    return reply if description is None else wire.frame(b"T", description) + reply[end:]


def _complete(count: int) -> bytes:
    return p.CommandComplete(f"SELECT {count}").encode()


def _fields(description: bytes) -> tuple[p.Field, ...]:
    message = p.decode_backend(b"T", description)
    assert isinstance(message, p.RowDescription)
    return message.fields


async def _run_node(host: MultiShardHost, query: NodeQuery) -> NodeReply | None:
    """The node's reply, or None when it did not answer or refused the client's role."""
    try:
        conn = await host.worker(query.node)
        role = host.role_on(conn)
        wrapped = role != conn.user
        text = f"SET ROLE {qualified(role)};\n{query.sql}\n;\nRESET ROLE" if wrapped else query.sql
        raw = await conn.exchange(text)
    except BackendError:
        host.drop_worker(query.node)
        return None
    return split_reply(raw, wrapped)


def _tag_start(raw: bytes, end: int, low: int) -> int:
    """Where the CommandComplete ending at ``end`` starts, or -1. Its tag holds no NUL byte, so the last
    NUL before the terminator is the third byte of its length."""
    q = raw.rfind(b"\0", low, end - 1)
    start = q - 3
    if start < low or raw[start:start + 1] != b"C" or _I32.unpack_from(raw, start + 1)[0] != end - start - 1:
        return -1
    return start


def split_reply(raw: bytes, wrapped: bool) -> NodeReply | None:
    """A node's reply to one SELECT (after SET ROLE when ``wrapped``): its RowDescription, the DataRow
    bytes as they came and the row count, found without walking every row; or its error."""
    pos = 0
    if wrapped:
        type_byte, length = _HEADER.unpack_from(raw, 0)
        if type_byte != b"C":
            return None  # SET ROLE refused: the coordinator decides
        pos = 1 + length
    type_byte, length = _HEADER.unpack_from(raw, pos)
    end = len(raw) - 6
    if type_byte == b"T" and raw[end:end + 1] == b"Z":
        head = pos + 1 + length
        if wrapped:
            reset = _tag_start(raw, end, head)
            end = reset if reset >= 0 and raw[reset + 5:end - 1] == b"RESET" else -1
        start = _tag_start(raw, end, head) if end >= 0 else -1
        tag = raw[start + 5:end - 1] if start >= 0 else b""
        if tag.startswith(b"SELECT ") and tag[7:].isdigit():
            return NodeReply(raw[pos + 5:head], raw[head:start], int(tag[7:]))
    # errors, notices: walk the messages
    description, rows, count = b"", [], 0
    for type_byte, payload in wire.Framer().feed(raw[pos:]):
        if type_byte == b"E":
            return NodeReply(b"", b"", 0, error=payload)
        if type_byte == b"T" and not description:
            description = payload
        elif type_byte == b"D":
            rows.append(wire.frame(type_byte, payload))
            count += 1
    return NodeReply(description, b"".join(rows), count)


def data_rows(region: bytes) -> list[bytes]:
    """The DataRow messages of a region of them, each whole."""
    out, pos, n = [], 0, len(region)
    while pos < n:
        _, length = _HEADER.unpack_from(region, pos)
        out.append(region[pos:pos + 1 + length])
        pos += 1 + length
    return out


def row_values(message: bytes) -> tuple[bytes | None, ...]:
    """The column values (text format) of one DataRow message."""
    values: list[bytes | None] = []
    count = struct.unpack_from("!h", message, 5)[0]
    pos = 7
    for _ in range(count):
        length = _I32.unpack_from(message, pos)[0]
        pos += 4
        if length < 0:
            values.append(None)
        else:
            values.append(message[pos:pos + length])
            pos += length
    return tuple(values)


def array_literal(values: Sequence[bytes | None]) -> bytes:
    """A one-dimensional array in PostgreSQL's text form, every element quoted (or NULL)."""
    return b"{" + b",".join(b"NULL" if v is None else b'"' + v.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
                            for v in values) + b"}"


async def _array_types(conn: WorkerConnection, types: Sequence[int]) -> list[int] | None:
    """The array type of each element type (None when one has none or another delimiter than ',')."""
    wanted = sorted({t for t in types if t not in _ARRAY_TYPES})
    found: dict[int, int] = {}
    if wanted:
        listed = ",".join(str(int(t)) for t in wanted)
        messages = await conn.request(f"SELECT oid, typarray, typdelim = ',' FROM pg_catalog.pg_type "
                                      f"WHERE oid = ANY('{{{listed}}}'::oid[])")
        for type_byte, payload in messages:
            if type_byte == b"D":
                oid, array, comma = row_values(wire.frame(type_byte, payload))
                if array and comma == b"t" and int(array):
                    found[int(oid or 0)] = int(array)
                    if int(oid or 0) < _FIRST_NORMAL_OID:
                        _ARRAY_TYPES[int(oid or 0)] = int(array)
    arrays = [_ARRAY_TYPES.get(t) or found.get(t) for t in types]
    return None if any(a is None for a in arrays) else [a for a in arrays if a is not None]


async def _combine(host: MultiShardHost, node: str, text: str, types: Sequence[int],
                   rows: Sequence[Sequence[bytes | None]]) -> bytes | None:
    """Run ``text`` with one array parameter per column of ``rows`` on ``node``; the client's reply
    (RowDescription, rows, CommandComplete or an ErrorResponse, then ReadyForQuery), or None."""
    try:
        return await combine_on(await host.worker(node), text, types, rows)
    except BackendError:
        host.drop_worker(node)
        return None


async def combine_on(conn: WorkerConnection, text: str, types: Sequence[int], rows: Sequence[Sequence[bytes | None]],
                     result_formats: Sequence[int] = ()) -> bytes | None:
    """:func:`_combine` on a connection, with these result formats; None when a column's type has no array
    type with ',' as delimiter (raises BackendError when the connection breaks)."""
    arrays = await _array_types(conn, types)
    if arrays is None:
        return None
    params = tuple(array_literal([row[i] for row in rows]) for i in range(len(types)))
    request = b"".join((p.Parse("", text, tuple(arrays)).encode(),
                        p.Bind("", "", (), params, tuple(result_formats)).encode(),
                        p.Describe("P", "").encode(), p.Execute("").encode(), p.Sync().encode()))
    raw = await conn.roundtrip(request)
    out = []
    for type_byte, payload in wire.Framer().feed(raw):
        if type_byte == b"E":
            return wire.frame(b"E", payload) + READY
        if type_byte in (b"T", b"D", b"C"):
            out.append(wire.frame(type_byte, payload))
    return b"".join(out) + READY
