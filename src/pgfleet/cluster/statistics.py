"""Planner statistics of new shards and reference copies, gathered before distribute / reference return.

A worker's autovacuum may analyze a shard while rows are still being copied into it. Its reltuples then
count a fraction of the rows, and so does everything built on them: the worker's own plans, the
coordinator's estimates through use_remote_estimate, and the coordinator's ANALYZE of the parent, whose
remote sampling takes the row count from the worker's reltuples (measured: 152,680 for 600,572 rows;
TPC-H-like joins 50-60x slower until a manual ANALYZE). So every shard is analyzed on its worker once
its rows are in, before the coordinator analyzes the parent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from ..errors import ExecuteError
from ..execute.connect import Conn, describe_error
from ..topology.model import Shard


def _analyze_node(node: str, conn: Conn, shards: list[Shard]) -> None:
    for shard in shards:
        name = sql.Identifier(shard.shard_schema, shard.shard_table)
        try:
            conn.execute(sql.SQL("ANALYZE {}").format(name))
        except psycopg.Error as exc:
            raise ExecuteError(f"ANALYZE of shard {shard.shard_schema}.{shard.shard_table} failed: "
                               f"{describe_error(exc)}", node=node) from None


def analyze_shards(conns: Mapping[str, Conn], shards: Iterable[Shard]) -> None:
    """ANALYZE each shard on its worker (autocommit connections by node name), the workers in parallel."""
    by_node: dict[str, list[Shard]] = {}
    for shard in shards:
        by_node.setdefault(shard.node, []).append(shard)
    with ThreadPoolExecutor(max_workers=max(1, len(by_node))) as pool:
        futures = [pool.submit(_analyze_node, node, conns[node], node_shards) for node, node_shards in by_node.items()]
        for future in futures:
            future.result()
