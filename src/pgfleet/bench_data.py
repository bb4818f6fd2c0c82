"""Benchmark data: generated rows loaded straight into a hash-distributed table's shards."""

from __future__ import annotations

import threading

from psycopg import sql

from .cluster.fleet import Fleet


def generate_into_shards(fleet: Fleet, table: str, select: str, modulus: int) -> None:
    """Bulk-load generated rows straight into a hash-distributed table's shards, in parallel.

    On each worker a throw-away partitioned parent with the same hash layout gets the worker's shards
    and empty stand-ins for the other shards attached; ``INSERT … SELECT`` then routes natively, and the
    stand-ins (the other workers' rows) are dropped. Only for loading benchmark data.
    """
    topo = fleet.topology()
    row = fleet.conn().execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()
    dist = topo.table(int(str(row[0])))  # type: ignore[index]
    assert dist is not None and dist.key is not None

    key = dist.key

    def on_worker(node: str) -> None:
        mine = {s.remainder: s for s in dist.shards if s.node == node}
        first = next(iter(mine.values()))
        worker = topo.node(node)
        assert worker is not None
        with fleet.worker_conn(worker) as conn:
            parent = sql.Identifier(first.shard_schema, f"pgfleet_gen_{dist.oid}")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(parent))
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {}) PARTITION BY HASH ({})").format(
                parent, sql.Identifier(first.shard_schema, first.shard_table), sql.Identifier(key)))
            for rem in range(modulus):
                bound = sql.SQL("FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(sql.Literal(modulus), sql.Literal(rem))
                if rem in mine:
                    target = sql.Identifier(mine[rem].shard_schema, mine[rem].shard_table)
                    conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent, target, bound))
                else:
                    stand_in = sql.Identifier(first.shard_schema, f"pgfleet_gen_{dist.oid}_{rem}")
                    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} PARTITION OF {} {}").format(stand_in, parent, bound))
            conn.execute(sql.SQL("INSERT INTO {} {}").format(parent, sql.SQL(select)))
            for shard in mine.values():
                conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                    parent, sql.Identifier(shard.shard_schema, shard.shard_table)))
            conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(parent))
            for shard in mine.values():
                conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(shard.shard_schema, shard.shard_table)))

    nodes = sorted({s.node for s in dist.shards})
    errors: list[BaseException] = []

    def guarded(node: str) -> None:
        try:
            on_worker(node)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    fleet.conn().execute(sql.SQL("ANALYZE {}").format(sql.SQL(table)))


ROW_SELECT = "SELECT g, g % 1000, (g * 7) % 100000, md5(g::text) FROM generate_series(1, {n}) g"
