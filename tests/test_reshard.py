"""`pgfleet reshard` in one step: new shards filled worker to worker, verified, switched in one coordinator
transaction, old shards dropped after; co-located tables together; a failure before the switch leaves the old
layout serving and nothing of the new one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import ExecuteError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

from conftest import connect, pgfleet_cli, routing_router
from test_undistribute import _same, _worker_tables

ROWS = 2000
SETUP = """
CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, grp int NOT NULL, f float8, n numeric(12,3),
                  at timestamptz, doc jsonb, twice int GENERATED ALWAYS AS (grp * 2) STORED,
                  note text DEFAULT 'n/a', CHECK (grp >= 0));
CREATE INDEX {t}_grp ON {t} (grp);
CREATE UNIQUE INDEX {t}_grp_id ON {t} (grp, id);
INSERT INTO {t} (grp, f, n, at, doc, note)
SELECT g % 13, g / 7.0, g / 3.0, timestamptz '2024-01-01 00:00+00' + g * interval '37 minutes',
       jsonb_build_object('g', g), CASE WHEN g % 5 = 0 THEN NULL ELSE 'row ' || g END
FROM generate_series(1, {n}) g;
"""
QUERIES = [
    "SELECT * FROM {t} ORDER BY id",
    "SELECT count(*), sum(n), sum(twice), sum(id) FROM {t}",  # (float sums depend on the order of rows)
    "SELECT grp, count(*), sum(n), max(at) FROM {t} GROUP BY grp ORDER BY grp",
]
SHARDS = b"SELECT shard_id, node, modulus, remainder FROM pgfleet.shards WHERE relid = 'dist'::regclass ORDER BY shard_index"

Conn = psycopg.Connection[Any]


def _setup(fleet: Fleet, schema: str, shards: int) -> Conn:
    conn = fleet.conn()
    for t in ("plain", "dist"):
        conn.execute(SETUP.format(t=t, n=ROWS).encode())
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(shards)))
    return conn


def _new_shards(cluster: LocalCluster, schema: str) -> list[tuple[str, str, str]]:
    """(node, schema, table) of the new shards of the reshard of dist running now (its pgfleet.operations row)."""
    with psycopg.connect(cluster.endpoint("coord").conninfo(), autocommit=True) as c:
        row = c.execute("SELECT detail FROM pgfleet.operations WHERE kind = 'reshard' AND state = 'running' "
                        "AND table_name = %s ORDER BY id DESC LIMIT 1", (f"{schema}.dist",)).fetchone()
    assert row is not None
    return [(s["node"], s["schema"], s["table"]) for s in row[0]["shards"]]


def _on_worker(cluster: LocalCluster, node: str, statement: str, params: tuple[object, ...] = ()) -> list[Any]:
    with psycopg.connect(cluster.endpoint(node).conninfo(), autocommit=True) as w:
        cur = w.execute(statement.encode(), params)
        return cur.fetchall() if cur.description else []


@pytest.mark.parametrize(("before", "after"), [(8, 4), (4, 6)])
def test_reshard_keeps_every_row_reachable(fleet: Fleet, cluster: LocalCluster, schema: str, before: int,
                                           after: int) -> None:
    conn = _setup(fleet, schema, before)
    with routing_router(cluster) as router, connect(cluster, router.config.port, schema) as routed:
        assert routed.execute(b"SELECT count(*) FROM dist").fetchone() == (ROWS,)
        phases: list[str] = []
        result = fleet.reshard(QualifiedName(schema, "dist"), after, lambda p, _d, _t: phases.append(p))
        assert (result.tables, result.shard_count, result.rows, result.leftovers) == \
            ((QualifiedName(schema, "dist"),), after, ROWS, ())
        assert {"shards", "copy", "verify", "swap"} <= set(phases)
        shards = conn.execute(SHARDS).fetchall()
        assert [(r[1], r[2], r[3]) for r in shards] == [(("w1", "w2")[i % 2], after, i) for i in range(after)]
        assert len(_worker_tables(cluster, schema)) == after  # the old shards are gone
        _same(conn, QUERIES)
        # every row by its key through the coordinator (pruned to one partition) …
        ids = [r[0] for r in conn.execute(b"SELECT id FROM plain ORDER BY id").fetchall()]
        found = sum(int(conn.execute(b"SELECT count(*) FROM dist WHERE id = %s", (i,)).fetchone()[0]) for i in ids)
        assert found == ROWS
        # … and through the router, once it has read the new topology
        time.sleep(2.5)
        cur = psycopg.ClientCursor(routed)
        found = 0
        for i in ids:
            cur.execute("SELECT id, grp FROM dist WHERE id = %s", (i,))
            found += len(cur.fetchall())
        assert found == ROWS
        cur.execute("INSERT INTO dist (id, grp) OVERRIDING SYSTEM VALUE VALUES (%s, 3)", (ROWS + 100,))
        conn.execute(b"INSERT INTO plain (id, grp) OVERRIDING SYSTEM VALUE VALUES (%s, 3)", (ROWS + 100,))
    _same(conn, QUERIES)
    # the new shards enforce the keys and the table's own CHECK
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute(b"INSERT INTO dist (id, grp) OVERRIDING SYSTEM VALUE VALUES (7, 1)")
    for t in ("plain", "dist"):  # (both: the failed insert draws an identity value)
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"INSERT INTO {t} (grp) VALUES (-1)".encode())
    for t in ("plain", "dist"):  # identity continues, generated column computed
        conn.execute(f"INSERT INTO {t} (grp, at) VALUES (4, '2025-01-01')".encode())
    _same(conn, QUERIES)
    node, shard_id = shards[0][1], shards[0][0]
    names = _on_worker(cluster, node, "SELECT relname FROM pg_class WHERE relname LIKE %s ORDER BY 1", (f"%{shard_id}",))
    assert [r[0] for r in names] == sorted(f"{n}_{shard_id}" for n in ("dist", "dist_pkey", "dist_grp", "dist_grp_id"))
    assert conn.execute(b"SELECT state FROM pgfleet.operations WHERE relid = 'dist'::regclass "
                        b"AND kind LIKE 'reshard%' ORDER BY id DESC LIMIT 1").fetchone() == ("done",)


COLOCATED = [
    "CREATE TABLE {p}orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric)",
    "CREATE TABLE {p}items (order_id bigint NOT NULL REFERENCES {p}orders (id), n int, qty int NOT NULL, "
    "PRIMARY KEY (order_id, n))",
    "INSERT INTO {p}orders SELECT g, 'c' || (g % 17), g * 1.5 FROM generate_series(1, 600) g",
    "INSERT INTO {p}items SELECT g % 600 + 1, g, g % 7 + 1 FROM generate_series(1, 1800) g",
]
JOIN = ("SELECT o.customer, count(*), sum(i.qty * o.total) FROM {p}orders o JOIN {p}items i ON i.order_id = o.id "
        "GROUP BY o.customer ORDER BY o.customer")


def test_colocated_tables_are_resharded_together(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    conn = fleet.conn()
    for statement in COLOCATED:
        for p in ("", "plain_"):
            conn.execute(statement.format(p=p).encode())
    with conn.transaction():  # the foreign key between them: both in one transaction (the SQL API)
        conn.execute(b"SELECT pgfleet.distribute_table('orders', 'id', shard_count => 4)")
        conn.execute(b"SELECT pgfleet.distribute_table('items', 'order_id', colocate_with => 'orders')")
    result = pgfleet_cli("reshard", f"{schema}.items", "--shards", "3", directory=cluster.directory)
    assert result.returncode == 0, result.stderr
    assert f"{schema}.items with its co-located table {schema}.orders now have 3 shards" in result.stdout
    assert "2400 rows copied and verified" in result.stdout
    layout = b"SELECT shard_index, node, modulus, remainder FROM pgfleet.shards WHERE relid = %s::regclass ORDER BY 1"
    assert conn.execute(layout, ("orders",)).fetchall() == conn.execute(layout, ("items",)).fetchall() == \
        [(i, ("w1", "w2")[i % 2], 3, i) for i in range(3)]
    assert conn.execute(b"SELECT DISTINCT g.shard_count FROM pgfleet.colocation_groups g JOIN pgfleet.tables t "
                        b"ON t.colocation_id = g.id WHERE t.relid IN ('orders'::regclass, 'items'::regclass)"
                        ).fetchall() == [(3,)]
    assert len(_worker_tables(cluster, schema)) == 6
    assert conn.execute(JOIN.format(p="").encode()).fetchall() == conn.execute(JOIN.format(p="plain_").encode()).fetchall()
    plan = "\n".join(str(r[0]) for r in conn.execute(f"EXPLAIN (VERBOSE) {JOIN.format(p='')}".encode()).fetchall())
    assert "Remote SQL" in plan and "JOIN" in plan.split("Remote SQL", 1)[1]  # the join still runs on the workers
    with pytest.raises(psycopg.errors.ForeignKeyViolation):  # the shards' foreign key, to the new orders shard
        conn.execute(b"INSERT INTO items VALUES (100000, 1, 1)")
    conn.execute(b"INSERT INTO orders VALUES (100000, 'new', 1)")
    conn.execute(b"INSERT INTO items VALUES (100000, 1, 1)")
    assert conn.execute(b"SELECT count(*) FROM orders o JOIN items i ON i.order_id = o.id WHERE o.id = 100000"
                        ).fetchone() == (1,)


def _fails_keeping_the_old_layout(fleet: Fleet, cluster: LocalCluster, schema: str,
                                  hook: Callable[[str, int, int], None], match: str) -> None:
    conn = _setup(fleet, schema, 4)
    before = conn.execute(SHARDS).fetchall()
    tables_before = _worker_tables(cluster, schema)
    with pytest.raises(ExecuteError, match=match) as failed:
        fleet.reshard(QualifiedName(schema, "dist"), 6, hook)
    assert "the old shards serve as before" in str(failed.value)
    assert conn.execute(SHARDS).fetchall() == before
    assert _worker_tables(cluster, schema) == tables_before  # no new shard left
    assert conn.execute(b"SELECT kind, state FROM pgfleet.operations WHERE relid = 'dist'::regclass "
                        b"ORDER BY id DESC LIMIT 1").fetchone() == ("reshard", "failed")
    _same(conn, QUERIES)
    for t in ("plain", "dist"):  # writable again: the locks are gone
        conn.execute(f"INSERT INTO {t} (grp, at) VALUES (4, '2025-01-01')".encode())
    _same(conn, QUERIES)
    assert fleet.reshard(QualifiedName(schema, "dist"), 6).rows == ROWS + 1  # and a later run succeeds


def test_a_verification_mismatch_leaves_the_old_layout(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    """A row changed in a new shard behind pgfleet's back (from the progress callback, before the check)."""
    def tamper(phase: str, done: int, _total: int) -> None:
        if phase == "verify" and done == 0:
            node, shard_schema, table = _new_shards(cluster, schema)[1]
            _on_worker(cluster, node, f'UPDATE "{shard_schema}"."{table}" SET note = \'changed\' '
                                      f'WHERE ctid = (SELECT min(ctid) FROM "{shard_schema}"."{table}")')

    _fails_keeping_the_old_layout(fleet, cluster, schema, tamper, "verification of .*dist failed: the old shards have "
                                  f"{ROWS} rows, the new {ROWS} with a different checksum")


def test_a_broken_copy_leaves_the_old_layout(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    """Every connection pgfleet has to w2 is ended in the middle of the copy."""
    calls = []

    def kill(phase: str, done: int, _total: int) -> None:
        if phase == "copy" and done > 0 and not calls:
            calls.append(done)
            _on_worker(cluster, "w2", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE application_name = 'pgfleet' AND pid <> pg_backend_pid()")

    _fails_keeping_the_old_layout(fleet, cluster, schema, kill, "resharding .*dist failed")


def test_old_shards_that_cannot_be_dropped_are_recorded_and_dropped_later(fleet: Fleet, cluster: LocalCluster,
                                                                          schema: str) -> None:
    conn = _setup(fleet, schema, 4)
    old = conn.execute(b"SELECT shard_schema, shard_table FROM pgfleet.shards WHERE relid = 'dist'::regclass "
                       b"AND node = 'w2' ORDER BY shard_index LIMIT 1").fetchone()
    assert old is not None
    _on_worker(cluster, "w2", f'CREATE VIEW "{old[0]}".blocker AS SELECT * FROM "{old[0]}"."{old[1]}"')
    result = fleet.reshard(QualifiedName(schema, "dist"), 2)
    assert result.shard_count == 2 and result.rows == ROWS
    assert f"w2:{old[0]}.{old[1]}" in result.leftovers
    _same(conn, QUERIES)  # the new layout serves
    assert next(u for u in fleet.status().unfinished if f"{schema}.dist" in u).startswith("reshard: old shards to drop")
    _on_worker(cluster, "w2", f'DROP VIEW "{old[0]}".blocker')
    again = pgfleet_cli("reshard", f"{schema}.dist", "--shards", "2", directory=cluster.directory)
    assert again.returncode == 0, again.stderr
    assert "removed 2 shards an unfinished reshard" in again.stdout
    assert len(_worker_tables(cluster, schema)) == 2
    assert not [u for u in fleet.status().unfinished if f"{schema}.dist" in u]
    _same(conn, QUERIES)


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_routed_writes_wait_for_the_reshard_and_are_never_lost(fleet: Fleet, cluster: LocalCluster,
                                                                 schema: str, protocol: str) -> None:
    """The router writes straight to the old shards: they are locked from before the copy to their drop, so a
    write sent meanwhile waits; when its shard is dropped under it (the router's topology snapshot is older
    than the reshard), the coordinator runs it on the new layout. It never lands in a dropped shard and the
    client sees no error."""
    conn = _setup(fleet, schema, 4)
    outcome: list[object] = []
    started: list[threading.Thread] = []
    waiting: list[bool] = []

    def write(port: int) -> None:
        try:
            with connect(cluster, port, schema) as routed:
                statement = "INSERT INTO dist (id, grp) OVERRIDING SYSTEM VALUE VALUES (%s, 1)"
                if protocol == "simple":
                    psycopg.ClientCursor(routed).execute(statement, (5000,))
                else:
                    routed.execute(statement, (5000,))
            outcome.append("ok")
        except psycopg.Error as exc:
            outcome.append(exc)

    with routing_router(cluster) as router:
        def hook(phase: str, _done: int, _total: int) -> None:
            if phase == "copy" and not started:
                started.append(threading.Thread(target=write, args=(router.config.port,)))
                started[0].start()
                time.sleep(1.0)
            if phase == "verify" and not waiting:
                waiting.append(started[0].is_alive())

        fleet.reshard(QualifiedName(schema, "dist"), 6, hook)
        started[0].join(30)
        fallbacks = router.context.stats.routing_fallbacks
    assert waiting == [True]  # the write waited through the copy
    assert outcome == ["ok"]
    assert fallbacks >= 1  # its old shard was dropped: the coordinator ran it
    assert conn.execute(b"SELECT count(*) FROM dist WHERE id = 5000").fetchone() == (1,)
    assert conn.execute(b"SELECT count(*) FROM dist").fetchone() == (ROWS + 1,)


@pytest.mark.parametrize(("before", "after"), [(8, 4), (4, 8), (4, 6), (6, 4), (3, 5), (8, 8)])
def test_only_pairs_that_can_share_rows_are_read(before: int, after: int) -> None:
    """A key's remainders mod M and mod N (of one unsigned 64-bit value, as PostgreSQL's hash partitioning
    computes it) agree mod gcd(M, N): lcm(M, N) pairs are read, and every pair a value takes is among them."""
    from math import lcm

    from pgfleet.cluster.reshard_copy import pairs
    from pgfleet.plan.tables import HASH_COMBINE_CONST
    from pgfleet.topology.model import Shard

    def shards(m: int) -> list[Shard]:
        return [Shard(i, 0, i, "w1", "s", f"t{i}", "f", f"t{i}", modulus=m, remainder=i) for i in range(m)]

    read = {(o.remainder, n.remainder) for o, n in pairs(shards(before), shards(after))}
    assert len(read) == lcm(before, after)
    for h in range(-5000, 5000, 7):
        u = (h * 0x9E3779B97F4A7C15 + HASH_COMBINE_CONST) % (1 << 64)
        assert (u % before, u % after) in read
