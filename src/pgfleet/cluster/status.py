"""Health and placement of every node and table."""

from __future__ import annotations

import time

import psycopg

from ..errors import PgfleetError
from ..execute import connect
from ..topology.model import Node, Topology
from .fleet import Fleet, NodeStatus, Status, TableStatus


def _probe(fleet: Fleet, node: Node, topo: Topology) -> NodeStatus:
    shards = [s for t in topo.tables for s in t.shards if s.node == node.name]
    address = f"{node.host}:{node.port}/{node.dbname}"
    try:
        start = time.monotonic()
        with connect(fleet.endpoint(node), timeout=3) as conn:
            row = conn.execute("SELECT current_setting('server_version')").fetchone()
            latency = (time.monotonic() - start) * 1000
            size = None
            if shards:
                names = [f'{s.shard_schema}.{s.shard_table}' for s in shards]
                srow = conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(to_regclass(quote_ident(split_part(n, '.', 1)) "
                    "|| '.' || quote_ident(split_part(n, '.', 2))))), 0)::bigint FROM unnest(%s::text[]) n",
                    (names,)).fetchone()
                size = int(str(srow[0])) if srow else None
        return NodeStatus(node.name, node.role, address, node.kind, True, str(row[0]) if row else "?",
                          round(latency, 1), len(shards), size)
    except (PgfleetError, psycopg.Error) as exc:
        return NodeStatus(node.name, node.role, address, node.kind, False, "", None, len(shards), None,
                          error=str(exc).split(" — ")[0])


def collect(fleet: Fleet) -> Status:
    topo = fleet.topology()
    nodes = tuple(_probe(fleet, n, topo) for n in topo.nodes)
    groups: dict[int, list[str]] = {}
    for t in topo.tables:
        if t.colocation_id is not None:
            groups.setdefault(t.colocation_id, []).append(str(t.name))
    tables = tuple(
        TableStatus(name=str(t.name), method=t.method, key=t.key, shards=len(t.shards),
                    nodes=tuple(sorted({s.node for s in t.shards})),
                    colocated_with=tuple(n for n in groups.get(t.colocation_id or -1, []) if n != str(t.name)))
        for t in topo.tables)
    unfinished = tuple(f"{r[0]} {r[1]} (started {r[2]:%Y-%m-%d %H:%M:%S})" for r in fleet.conn().execute(
        "SELECT kind, table_name, started_at FROM pgfleet.operations WHERE state = 'running' ORDER BY id").fetchall())
    return Status(nodes=nodes, tables=tables, unfinished=unfinished)
