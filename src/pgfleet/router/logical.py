"""A routed statement's reply in the coordinator's terms, for the logical table rather than its shard.

* **Errors and notices** name what a single server with the logical table would name: the shard table
  (``orders_102000``, also schema-qualified) becomes the table (``orders``), a shard's constraint or index
  (``orders_pkey_102000``: :func:`pgfleet.plan.tables.shard_object_name`) loses its ``_<shard id>``
  suffix, in the message, detail, hint and context and in the table, schema and constraint fields. Only
  the shards the route touches are renamed: names inside double quotes (how PostgreSQL quotes names in
  most messages), and the shard table's name also as a whole unquoted identifier ("permission denied for
  table orders_102000"). A name too long for its suffix (cut and md5-tagged when the shard was made) stays.
* **RowDescription** of a simple Query: a column of a shard table (or a reference table's copy) carries the
  worker's table oid and attribute number; they become the coordinator's table oid and attribute number
  (the same column by name, so a column dropped on the coordinator before distribution, which leaves a
  gap in its numbers but not in the shard's, maps right). The worker's oids are learned once per node
  and topology snapshot with one catalog query on the connection that answered; rewritten descriptions
  are cached by their bytes, so a repeated statement costs one dictionary lookup.

Cheap by construction: only ErrorResponse / NoticeResponse messages are decoded (and only when the
worker connection saw one, :attr:`.backend.WorkerConnection.flagged`), and the RowDescription is found
by skipping the messages before it; DataRows are never looked at.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from psycopg import sql

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection
from .routes import Shard
from .snapshot import RoutedTable, RoutingTopology

log = logging.getLogger(__name__)

FIRST_USER_OID = 16384  # catalog tables below: the same oid on every server
MAX_DESCRIPTIONS = 4096
_QUOTED = re.compile(r'"([^"]*)"')
_TEXT_FIELDS = frozenset("MDHW")  # message, detail, hint, context
_NO_DESCRIPTION_AFTER = frozenset(b"DCIEZ")  # a RowDescription comes before any of these

_LEARN = """SELECT c.oid::bigint, n.nspname, c.relname, a.attnum, a.attname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.oid = ANY({}::oid[])"""

TableMap = tuple[int, dict[int, int]]  # the coordinator's table oid, worker attnum -> coordinator attnum


class Renames:
    """The names of the shards one route touches, and what a single server would call them."""

    def __init__(self, exact: dict[str, str], suffixes: tuple[str, ...], schemas: dict[str, tuple[str, str]]) -> None:
        self.exact = exact
        self.suffixes = suffixes
        self.schemas = schemas  # shard table name -> (its schema on the worker, the logical table's schema)
        # unquoted shard table names ("permission denied for table orders_102000"), as whole identifiers
        names = sorted(exact, key=len, reverse=True)
        self._bare = re.compile("(?<![\\w$.])(" + "|".join(re.escape(n) for n in names) + ")(?![\\w$])") if names else None

    def name(self, text: str) -> str:
        if text in self.exact:
            return self.exact[text]
        for suffix in self.suffixes:
            if text.endswith(suffix) and len(text) > len(suffix):
                return text[:-len(suffix)]
        return text

    def text(self, text: str) -> str:
        if '"' in text:
            text = _QUOTED.sub(lambda m: '"' + self.name(m.group(1)) + '"', text)
        if self._bare is not None:
            text = self._bare.sub(lambda m: self.exact[m.group(1)], text)
        return text


class LogicalNames:
    """For one topology snapshot: shard → logical table, and what was learned of the workers' oids."""

    def __init__(self, topology: RoutingTopology) -> None:
        self.topology = topology
        self.shards = {s.shard_id: (t, s) for t in topology.tables for s in t.shards}
        self.on_node: dict[str, dict[tuple[str, str], RoutedTable]] = {}
        for t in topology.tables:
            for s in t.shards:
                self.on_node.setdefault(s.node, {})[(s.shard_schema, s.shard_table)] = t
        self.oids: dict[str, dict[int, TableMap | None]] = {}  # by node: worker table oid -> map (None: not ours)
        self.descriptions: dict[tuple[str, bytes], bytes] = {}
        self._renames: dict[tuple[int, ...], Renames] = {}

    # --- errors and notices ---------------------------------------------------------------------------
    def renames(self, shard_ids: tuple[int, ...]) -> Renames:
        known = self._renames.get(shard_ids)
        if known is None:
            exact: dict[str, str] = {}
            schemas: dict[str, tuple[str, str]] = {}
            for sid in shard_ids:
                if sid in self.shards:
                    table, shard = self.shards[sid]
                    exact[shard.shard_table] = table.relname
                    exact[f"{shard.shard_schema}.{shard.shard_table}"] = f"{table.schema}.{table.relname}"
                    schemas[shard.shard_table] = (shard.shard_schema, table.schema)
            known = self._renames[shard_ids] = Renames(exact, tuple(f"_{sid}" for sid in shard_ids), schemas)
        return known

    def reported(self, shard_ids: tuple[int, ...], reply: bytes) -> bytes:
        """``reply`` with its ErrorResponse and NoticeResponse messages in the logical table's names."""
        renames = self.renames(shard_ids)
        out: list[bytes] = []
        pos = start = 0
        while pos + 5 <= len(reply):
            type_byte = reply[pos:pos + 1]
            end = pos + 1 + int.from_bytes(reply[pos + 1:pos + 5], "big")
            if type_byte in (b"E", b"N"):
                message = p.decode_backend(type_byte, reply[pos + 5:end])
                assert isinstance(message, p.ErrorResponse)
                fields = renamed(message.fields, renames)
                if fields != message.fields:
                    out += [reply[start:pos], type(message)(fields).encode()]
                    start = end
            pos = end
        return b"".join([*out, reply[start:]]) if out else reply

    # --- RowDescription -------------------------------------------------------------------------------
    def description(self, node: str, payload: bytes) -> bytes | None:
        """The coordinator's RowDescription for a worker's; None when a table oid in it is not known yet."""
        key = (node, payload)
        known = self.descriptions.get(key)
        if known is not None:
            return known
        message = p.decode_backend(b"T", payload)
        assert isinstance(message, p.RowDescription)
        oids = self.oids.get(node, {})
        fields = []
        for f in message.fields:
            if f.table_oid < FIRST_USER_OID:
                fields.append(f)
                continue
            if f.table_oid not in oids:
                return None
            mapped = oids[f.table_oid]
            fields.append(f if mapped is None else replace(f, table_oid=mapped[0], column=mapped[1].get(f.column, 0)))
        out = p.RowDescription(tuple(fields)).payload()
        if len(self.descriptions) < MAX_DESCRIPTIONS:
            self.descriptions[key] = out
        return out

    def unknown_oids(self, node: str, payload: bytes) -> list[int]:
        message = p.decode_backend(b"T", payload)
        assert isinstance(message, p.RowDescription)
        oids = self.oids.get(node, {})
        return sorted({f.table_oid for f in message.fields if f.table_oid >= FIRST_USER_OID and f.table_oid not in oids})

    async def learn(self, conn: WorkerConnection, node: str, wanted: list[int]) -> None:
        """Which tables of the snapshot ``wanted`` are on ``node``, with their columns' numbers there."""
        query = sql.SQL(_LEARN).format(sql.Literal("{" + ",".join(str(int(o)) for o in wanted) + "}")).as_string()
        found: dict[int, tuple[str, str, dict[int, str]]] = {}
        for type_byte, payload in await conn.request(query):
            if type_byte == b"E":
                return  # e.g. a failed transaction: nothing learned, the description stays the worker's
            if type_byte == b"D":
                row = p.decode_backend(type_byte, payload)
                assert isinstance(row, p.DataRow)
                relid, schema, name, attnum, attname = (v.decode() if v is not None else "" for v in row.values)
                found.setdefault(int(relid), (schema, name, {}))[2][int(attnum)] = attname
        oids = self.oids.setdefault(node, {})
        for oid in wanted:
            schema, name, columns = found.get(oid, ("", "", {}))
            table = self.on_node.get(node, {}).get((schema, name))
            if table is None:
                oids[oid] = None
                continue
            numbers = dict(zip(table.columns, table.attnums, strict=False))
            oids[oid] = (table.oid, {att: numbers[col] for att, col in columns.items() if col in numbers})

    # --- a whole reply --------------------------------------------------------------------------------
    def shaped(self, route: Shard, reply: bytes, flagged: bool, *, describe: bool = True) -> bytes | None:
        """``reply`` in the logical table's terms; None when its RowDescription needs :meth:`learn` first."""
        if describe:
            at = description_at(reply)
            if at >= 0:
                end = at + 1 + int.from_bytes(reply[at + 1:at + 5], "big")
                payload = reply[at + 5:end]
                new = self.description(route.node, payload)
                if new is None:
                    return None
                if new != payload:
                    reply = reply[:at] + wire.frame(b"T", new) + reply[end:]
        return self.reported(route.shard_ids, reply) if flagged else reply

    async def shape(self, route: Shard, conn: WorkerConnection, reply: bytes, flagged: bool, *,
                    describe: bool = True) -> bytes:
        """:meth:`shaped`, learning the worker's oids first when needed (on ``conn``, which must be idle)."""
        out = self.shaped(route, reply, flagged, describe=describe)
        if out is None:
            at = description_at(reply)
            end = at + 1 + int.from_bytes(reply[at + 1:at + 5], "big")
            try:
                await self.learn(conn, route.node, self.unknown_oids(route.node, reply[at + 5:end]))
            except BackendError as exc:
                log.warning("could not read table oids on %s: %s", route.node, exc)
            out = self.shaped(route, reply, flagged, describe=describe)
        return out if out is not None else (self.reported(route.shard_ids, reply) if flagged else reply)


def renamed(fields: tuple[tuple[str, str], ...], renames: Renames) -> tuple[tuple[str, str], ...]:
    """An error's fields with shard names replaced; the schema field follows a renamed table."""
    table = dict(fields).get("t")
    out = []
    for code, text in fields:
        new = text
        if code in _TEXT_FIELDS:
            new = renames.text(text)
        elif code in ("t", "n"):
            new = renames.name(text)
        elif code == "s" and table is not None and renames.schemas.get(table, ("", ""))[0] == text:
            new = renames.schemas[table][1]
        out.append((code, new))
    return tuple(out)


def description_at(reply: bytes) -> int:
    """The offset of the reply's RowDescription, or -1: the messages before it are skipped by length."""
    pos = 0
    while pos + 5 <= len(reply):
        type_byte = reply[pos]
        if type_byte == 84:  # 'T'
            return pos
        if type_byte in _NO_DESCRIPTION_AFTER:
            return -1
        pos += 1 + int.from_bytes(reply[pos + 1:pos + 5], "big")
    return -1


_current: dict[int, LogicalNames] = {}


def names_for(topology: RoutingTopology) -> LogicalNames:
    """The :class:`LogicalNames` of this snapshot (a new snapshot starts afresh: oids may have changed)."""
    known = _current.get(id(topology))
    if known is None or known.topology is not topology:
        if len(_current) >= 8:
            _current.clear()
        known = _current[id(topology)] = LogicalNames(topology)
    return known


def finish_routed(names: LogicalNames, route: Shard, conn: WorkerConnection, reply: bytes,
                  then: Callable[[bytes], None], spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """Give ``then`` the reply in the logical table's terms: at once, or after learning the worker's oids."""
    flagged = conn.flagged  # the catalog query that learns the oids is a reply of its own
    out = names.shaped(route, reply, flagged)
    if out is not None:
        then(out)
        return

    async def learn_then() -> None:
        then(await names.shape(route, conn, reply, flagged))

    spawn(learn_then())
