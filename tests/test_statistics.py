"""Planner statistics match the data when distribute / reference return.

Autovacuum on a worker may analyze a shard while rows are still being copied into it; the tests
reproduce that by analyzing the shards at every progress event of the copy before the last. The last
one leaves 3/4 of the rows counted, enough that the coordinator's ANALYZE samples remotely and takes
the worker's stale row count (with few rows it fetches them all and counts right).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from pgfleet.topology.model import Shard

ROWS = 200_000


def _analyze_mid_copy(fleet: Fleet, table: str) -> Any:
    """A progress callback that analyzes every shard of the table being distributed while rows move."""
    done: list[int] = []

    def progress(phase: str, moved: int, total: int) -> None:
        if phase == "copy" and 0 < moved < total:
            topo = fleet.topology()
            for op_shard in _running_shards(fleet, table):
                node = topo.node(op_shard[0])
                assert node is not None
                with fleet.worker_conn(node) as w:
                    w.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(op_shard[1], op_shard[2])))
            done.append(moved)

    progress.done = done  # type: ignore[attr-defined]
    return progress


def _running_shards(fleet: Fleet, table: str) -> list[tuple[str, str, str]]:
    row = fleet.conn().execute("SELECT detail FROM pgfleet.operations WHERE state = 'running' AND table_name = %s",
                               (table,)).fetchone()
    assert row is not None
    return [(s["node"], s["schema"], s["table"]) for s in row[0]["shards"]]


def _shard_stats(fleet: Fleet, shards: tuple[Shard, ...]) -> list[tuple[float, int]]:
    """(reltuples, real row count) of each shard, read on its worker."""
    topo = fleet.topology()
    found = []
    for shard in shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            name = sql.Identifier(shard.shard_schema, shard.shard_table)
            row = w.execute(sql.SQL("SELECT (SELECT reltuples FROM pg_class WHERE oid = {}::regclass), count(*) "
                                    "FROM {}").format(sql.Literal(name.as_string(w)), name)).fetchone()
            assert row is not None
            found.append((float(row[0]), int(row[1])))
    return found


def _close(estimate: float, real: int, within: float = 0.05) -> bool:
    return abs(estimate - real) <= within * real


def _coordinator_estimate(fleet: Fleet, query: str) -> float:
    row = fleet.conn().execute(f"EXPLAIN (FORMAT JSON) {query}".encode()).fetchone()
    assert row is not None
    return float(row[0][0]["Plan"]["Plan Rows"])


def _fill(fleet: Fleet, name: str) -> None:
    conn = fleet.conn()
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, grp int, pad text)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g %% 100, repeat('x', 40) FROM generate_series(1, %s) g").format(
        sql.Identifier(name)), (ROWS,))


def test_statistics_after_distribute(fleet: Fleet, schema: str) -> None:
    _fill(fleet, "t")
    _fill(fleet, "c")
    progress = _analyze_mid_copy(fleet, f"{schema}.t")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(2)), progress)
    assert progress.done, "the copy finished before the shards could be analyzed mid-copy"
    dist = next(t for t in fleet.topology().tables if t.name == QualifiedName(schema, "t"))
    stats = _shard_stats(fleet, dist.shards)
    assert sum(real for _, real in stats) == ROWS
    assert all(_close(reltuples, real) for reltuples, real in stats), stats
    assert _close(_coordinator_estimate(fleet, "SELECT * FROM t"), ROWS)
    # one value's frequency comes from ANALYZE's sample (30,000 rows: about 6% standard error for a 1% value);
    # stale statistics would be 25% off
    assert _close(_coordinator_estimate(fleet, "SELECT * FROM t WHERE grp = 7"), ROWS // 100, within=0.2)
    # a co-located table: its partitions ask the workers (use_remote_estimate)
    progress = _analyze_mid_copy(fleet, f"{schema}.c")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "c"), "id", colocate_with=QualifiedName(schema, "t")),
                     progress)
    assert progress.done
    assert _close(_coordinator_estimate(fleet, "SELECT * FROM c"), ROWS)


def test_statistics_after_reference(fleet: Fleet, schema: str) -> None:
    _fill(fleet, "r")
    fleet.conn().execute("ANALYZE r")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "r")))
    ref = next(t for t in fleet.topology().tables if t.name == QualifiedName(schema, "r"))
    stats = _shard_stats(fleet, ref.shards)
    assert len(stats) == 2 and all(real == ROWS and _close(reltuples, real) for reltuples, real in stats), stats
