"""Health and placement of every node and table, over one or several coordinator databases."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import psycopg

from ..errors import PgfleetError
from ..execute import connect
from ..execute.connect import Conn
from ..topology.model import DistTable, Node, Shard, Topology
from .fleet import Fleet, NodeStatus, ShardStatus, Status, TableStatus


def _shards_on(topo: Topology, node: str) -> list[Shard]:
    return [s for t in topo.tables for s in t.shards if s.node == node]


def _sizes(conn: Conn, shards: list[Shard]) -> dict[int, int | None]:
    """pg_total_relation_size of each shard table (by shard id); None for a missing one."""
    if not shards:
        return {}
    rows = conn.execute(
        "SELECT i, pg_total_relation_size(to_regclass(format('%%I.%%I', s, t)))::bigint "
        "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS x(i, s, t)",
        ([s.shard_id for s in shards], [s.shard_schema for s in shards],
         [s.shard_table for s in shards])).fetchall()
    return {int(str(r[0])): None if r[1] is None else int(str(r[1])) for r in rows}


def _probe(fleet: Fleet, node: Node, shards: list[Shard]) -> tuple[NodeStatus, dict[int, int | None]]:
    """The node's health and the size of each of its shard tables (by shard id) in ``fleet``'s database."""
    address = f"{node.host}:{node.port}/{node.dbname}"
    try:
        start = time.monotonic()
        with connect(fleet.endpoint(node), timeout=3) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
            latency = (time.monotonic() - start) * 1000
            sizes = _sizes(conn, shards)
        return (NodeStatus(node.name, node.role, address, node.kind, True, str(row[0]) if row else "?",
                           round(latency, 1), len(shards), None), sizes)
    except (PgfleetError, psycopg.Error) as exc:
        return (NodeStatus(node.name, node.role, address, node.kind, False, "", None, len(shards), None,
                           error=str(exc).split(" — ")[0]), {})


def _sizes_in(fleet: Fleet, node: Node, shards: list[Shard]) -> dict[int, int | None]:
    """The sizes of ``node``'s shard tables in ``fleet``'s database (the node's health is known already)."""
    if not shards:
        return {}
    try:
        with connect(fleet.endpoint(node), timeout=3) as conn:
            return _sizes(conn, shards)
    except (PgfleetError, psycopg.Error):
        return {}


def _table_status(database: str, t: DistTable, sizes: dict[int, int | None],
                  colocated_with: tuple[str, ...]) -> TableStatus:
    shard_sizes = tuple(ShardStatus(str(s.shard_name), s.node, sizes.get(s.shard_id)) for s in t.shards)
    known = [s.bytes for s in shard_sizes if s.bytes is not None]
    return TableStatus(database=database, name=str(t.name), method=t.method, key=t.key, shards=len(t.shards),
                       nodes=tuple(sorted({s.node for s in t.shards})), colocated_with=colocated_with,
                       bytes=sum(known) if len(known) == len(shard_sizes) else None, shard_sizes=shard_sizes)


def _tables(database: str, topo: Topology, sizes: dict[int, int | None]) -> list[TableStatus]:
    groups: dict[int, list[str]] = {}
    for t in topo.tables:
        if t.colocation_id is not None:
            groups.setdefault(t.colocation_id, []).append(str(t.name))
    return [_table_status(database, t, sizes,
                          tuple(n for n in groups.get(t.colocation_id or -1, []) if n != str(t.name)))
            for t in topo.tables]


def collect(fleets: Fleet | Sequence[Fleet]) -> Status:
    """The status of the tables of every database of ``fleets`` (one Fleet per coordinator database, the
    main one first), each node's health probed once (in the first database whose catalog names it), its
    shard count and bytes summed over the databases."""
    fleets = [fleets] if isinstance(fleets, Fleet) else list(fleets)
    topos = [(f, f.topology()) for f in fleets]
    nodes: dict[str, NodeStatus] = {}
    shards: dict[str, int] = {}
    node_bytes: dict[str, int] = {}
    tables: list[TableStatus] = []
    unfinished: list[str] = []
    for fleet, topo in topos:
        database = fleet.coordinator.dbname
        sizes: dict[int, int | None] = {}
        for node in topo.nodes:
            mine = _shards_on(topo, node.name)
            if node.name not in nodes:
                nodes[node.name], found = _probe(fleet, node, mine)
            else:
                found = _sizes_in(fleet, node, mine) if nodes[node.name].healthy else {}
            sizes.update(found)
            shards[node.name] = shards.get(node.name, 0) + len(mine)
            node_bytes[node.name] = node_bytes.get(node.name, 0) + sum(v for v in found.values() if v is not None)
        tables += _tables(database, topo, sizes)
        unfinished += [f"{r[0]} {r[1]} in database {database} (started {r[2]:%Y-%m-%d %H:%M:%S})"
                       for r in fleet.conn().execute("SELECT kind, table_name, started_at FROM pgfleet.operations "
                                                     "WHERE state = 'running' ORDER BY id").fetchall()]
    return Status(
        databases=tuple(f.coordinator.dbname for f in fleets),
        nodes=tuple(replace(n, shards=shards[n.name],
                            bytes=node_bytes[n.name] if n.healthy and shards[n.name] else None)
                    for n in nodes.values()),
        tables=tuple(tables), unfinished=tuple(unfinished))
