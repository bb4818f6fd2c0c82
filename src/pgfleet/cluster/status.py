"""Health and placement of every node and table."""

from __future__ import annotations

import time

import psycopg

from ..errors import PgfleetError
from ..execute import connect
from ..topology.model import DistTable, Node, Topology
from .fleet import Fleet, NodeStatus, ShardStatus, Status, TableStatus


def _probe(fleet: Fleet, node: Node, topo: Topology) -> tuple[NodeStatus, dict[int, int | None]]:
    """The node's health and the size of each of its shard tables (by shard id)."""
    shards = [s for t in topo.tables for s in t.shards if s.node == node.name]
    address = f"{node.host}:{node.port}/{node.dbname}"
    try:
        start = time.monotonic()
        with connect(fleet.endpoint(node), timeout=3) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
            latency = (time.monotonic() - start) * 1000
            sizes: dict[int, int | None] = {}
            if shards:
                rows = conn.execute(
                    "SELECT i, pg_total_relation_size(to_regclass(format('%%I.%%I', s, t)))::bigint "
                    "FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS x(i, s, t)",
                    ([s.shard_id for s in shards], [s.shard_schema for s in shards],
                     [s.shard_table for s in shards])).fetchall()
                sizes = {int(str(r[0])): None if r[1] is None else int(str(r[1])) for r in rows}
            size = sum(v for v in sizes.values() if v is not None) if shards else None
        return (NodeStatus(node.name, node.role, address, node.kind, True, str(row[0]) if row else "?",
                           round(latency, 1), len(shards), size), sizes)
    except (PgfleetError, psycopg.Error) as exc:
        return (NodeStatus(node.name, node.role, address, node.kind, False, "", None, len(shards), None,
                           error=str(exc).split(" — ")[0]), {})


def _table_status(t: DistTable, sizes: dict[int, int | None], colocated_with: tuple[str, ...]) -> TableStatus:
    shard_sizes = tuple(ShardStatus(str(s.shard_name), s.node, sizes.get(s.shard_id)) for s in t.shards)
    known = [s.bytes for s in shard_sizes if s.bytes is not None]
    return TableStatus(name=str(t.name), method=t.method, key=t.key, shards=len(t.shards),
                       nodes=tuple(sorted({s.node for s in t.shards})), colocated_with=colocated_with,
                       bytes=sum(known) if len(known) == len(shard_sizes) else None, shard_sizes=shard_sizes)


def collect(fleet: Fleet) -> Status:
    topo = fleet.topology()
    probes = [_probe(fleet, n, topo) for n in topo.nodes]
    nodes = tuple(p[0] for p in probes)
    sizes = {shard: size for p in probes for shard, size in p[1].items()}
    groups: dict[int, list[str]] = {}
    for t in topo.tables:
        if t.colocation_id is not None:
            groups.setdefault(t.colocation_id, []).append(str(t.name))
    tables = tuple(
        _table_status(t, sizes, tuple(n for n in groups.get(t.colocation_id or -1, []) if n != str(t.name)))
        for t in topo.tables)
    unfinished = tuple(f"{r[0]} {r[1]} (started {r[2]:%Y-%m-%d %H:%M:%S})" for r in fleet.conn().execute(
        "SELECT kind, table_name, started_at FROM pgfleet.operations WHERE state = 'running' ORDER BY id").fetchall())
    return Status(nodes=nodes, tables=tables, unfinished=unfinished)
