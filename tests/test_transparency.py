"""Any client through the coordinator: every result equals the same data in one plain table."""

from __future__ import annotations

import io

import psycopg
import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.errors import ExecuteError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec, parse_range_bounds

ROWS = 3000

SETUP = """
CREATE TABLE {t} (id bigserial PRIMARY KEY, grp int NOT NULL, val int, note text DEFAULT 'n/a',
                  CHECK (val >= 0));
CREATE TABLE {t}_items (order_id bigint NOT NULL, item int NOT NULL, qty int NOT NULL, PRIMARY KEY (order_id, item));
CREATE TABLE {t}_groups (grp int PRIMARY KEY, label text NOT NULL);
INSERT INTO {t} (grp, val, note) SELECT g % 17, g % 101, 'row ' || g FROM generate_series(1, {n}) g;
INSERT INTO {t}_items SELECT g, i, (g * i) % 7 + 1 FROM generate_series(1, {n}) g, generate_series(1, 2) i;
INSERT INTO {t}_groups SELECT g, 'group ' || g FROM generate_series(0, 16) g;
"""

QUERIES = [
    "SELECT * FROM {t} WHERE id = 42",
    "SELECT * FROM {t} WHERE id IN (1, 7, 2999, 5000)",
    "SELECT count(*), sum(val), min(note), max(id) FROM {t}",
    "SELECT grp, count(*), sum(val), avg(val)::numeric(10,4) FROM {t} GROUP BY grp ORDER BY grp",
    "SELECT id, val FROM {t} ORDER BY val DESC, id LIMIT 10",
    "SELECT o.id, sum(i.qty) FROM {t} o JOIN {t}_items i ON i.order_id = o.id WHERE o.grp = 3 GROUP BY o.id ORDER BY o.id",
    "SELECT g.label, count(*) FROM {t} o JOIN {t}_groups g ON g.grp = o.grp GROUP BY g.label ORDER BY g.label",
    "SELECT count(DISTINCT grp) FROM {t} WHERE val BETWEEN 10 AND 20",
    "SELECT * FROM {t} WHERE note LIKE 'row 12%' ORDER BY id",
]

MUTATIONS = [
    "INSERT INTO {t} (grp, val) VALUES (1, 5)",
    "INSERT INTO {t} (grp, val, note) VALUES (2, 6, 'a'), (3, 7, 'b'), (4, 8, 'c')",
    "INSERT INTO {t} (grp, val) SELECT grp, val + 1 FROM (SELECT * FROM {t} WHERE id <= 100 ORDER BY id) s",
    "UPDATE {t} SET val = val + 1000 WHERE grp = 5",
    "UPDATE {t} SET note = 'pinned' WHERE id = 77",
    "DELETE FROM {t} WHERE id % 13 = 0",
    "DELETE FROM {t}_items WHERE order_id = 8",
    "UPDATE {t}_groups SET label = upper(label) WHERE grp < 3",
]


def _rows(conn: psycopg.Connection[tuple[object, ...]], query: str, table: str) -> list[tuple[object, ...]]:
    """The result; as a sorted multiset when the query has no ORDER BY (row order is then undefined)."""
    rows = conn.execute(query.format(t=table).encode()).fetchall()
    return rows if "ORDER BY" in query else sorted(rows, key=repr)


def _setup(fleet: Fleet, schema: str, how: str) -> None:
    conn = fleet.conn()
    for table in ("plain", "dist"):
        conn.execute(SETUP.format(t=table, n=ROWS).encode())
    dist = QualifiedName(schema, "dist")
    items = QualifiedName(schema, "dist_items")
    if how == "hash":
        fleet.distribute(DistributeSpec(dist, "id", HashSpec(8)))
    else:
        fleet.distribute(DistributeSpec(dist, "id", parse_range_bounds("min,1000,2000,3000,max")))
    fleet.distribute(DistributeSpec(items, "order_id", colocate_with=dist))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "dist_groups")))


@pytest.mark.parametrize("how", ["hash", "range"])
def test_reads_and_writes_match_a_plain_table(fleet: Fleet, schema: str, how: str) -> None:
    _setup(fleet, schema, how)
    conn = fleet.conn()
    for query in QUERIES:
        assert _rows(conn, query, "dist") == _rows(conn, query, "plain"), query
    for mutation in MUTATIONS:
        d = conn.execute(mutation.format(t="dist").encode()).rowcount
        p = conn.execute(mutation.format(t="plain").encode()).rowcount
        assert d == p, mutation
        for query in QUERIES:
            assert _rows(conn, query, "dist") == _rows(conn, query, "plain"), (mutation, query)
    returning = "UPDATE {t} SET val = val + 1 WHERE id IN (3, 4) RETURNING id, val, note"
    assert sorted(_rows(conn, returning, "dist")) == sorted(_rows(conn, returning, "plain"))
    returning = "INSERT INTO {t} (grp, val) VALUES (9, 9) RETURNING id, grp, val, note"
    assert _rows(conn, returning, "dist") == _rows(conn, returning, "plain")
    returning = "DELETE FROM {t} WHERE id = 5 RETURNING *"
    assert _rows(conn, returning, "dist") == _rows(conn, returning, "plain")


def test_copy_from_and_psycopg_parameters(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    conn = fleet.conn()
    data = "".join(f"{100000 + i}\t{i % 5}\t{i}\tcopied\n" for i in range(2000))
    for table in ("plain", "dist"):
        with conn.cursor().copy(sql.SQL("COPY {} (id, grp, val, note) FROM STDIN").format(sql.Identifier(table))) as cp:
            cp.write(data)
    for query in QUERIES:
        assert _rows(conn, query, "dist") == _rows(conn, query, "plain")
    for key in (1, 100500, 101999, 999999):
        got = conn.execute("SELECT * FROM dist WHERE id = %s", (key,), prepare=True).fetchall()
        assert got == conn.execute("SELECT * FROM plain WHERE id = %s", (key,)).fetchall()


def test_pruning_on_key_equality_and_in_list(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    conn = fleet.conn()
    plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN SELECT * FROM dist WHERE id = 42").fetchall())
    assert plan.count("Foreign Scan") == 1, plan
    plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN SELECT * FROM dist WHERE id IN (1, 2)").fetchall())
    assert 1 <= plan.count("Foreign Scan") <= 2, plan
    plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN SELECT * FROM dist").fetchall())
    assert plan.count("Foreign Scan") == 8, plan


def test_colocated_join_is_pushed_down_per_shard_pair(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    plan = "\n".join(str(r[0]) for r in fleet.conn().execute(
        "EXPLAIN (COSTS OFF) SELECT o.id, i.qty FROM dist o JOIN dist_items i ON i.order_id = o.id").fetchall())
    assert plan.count("INNER JOIN") == 8, plan


def test_key_update_is_rejected_not_misplaced(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    conn = fleet.conn()
    with pytest.raises(psycopg.errors.CheckViolation, match="distribution key cannot move"):
        conn.execute("UPDATE dist SET id = 10 WHERE id = 11")
    assert conn.execute("SELECT count(*) FROM dist WHERE id IN (10, 11)").fetchone() == (2,)


def test_data_moved_with_count_and_placement(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    conn = fleet.conn()
    # Every row sits in the shard its key hashes to: the shard's CHECK would have refused it otherwise,
    # and a direct look at the workers finds each id exactly once.
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == QualifiedName(schema, "dist"))
    seen: list[int] = []
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            seen += [int(str(r[0])) for r in w.execute(
                sql.SQL("SELECT id FROM {}").format(sql.Identifier(shard.shard_schema, shard.shard_table))).fetchall()]
    assert sorted(seen) == list(range(1, ROWS + 1))
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'dist'::regclass").fetchone() == ("p",)
    # the sequence moved with the table: new ids continue after the old ones
    assert conn.execute("INSERT INTO dist (grp, val) VALUES (1, 1) RETURNING id").fetchone() == (ROWS + 1,)


def test_insert_outside_list_values_is_refused(fleet: Fleet, schema: str) -> None:
    from pgfleet.spec import ListShard, ListSpec

    conn = fleet.conn()
    conn.execute("CREATE TABLE sites (id int, location text NOT NULL)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "sites"), "location",
                                    ListSpec((ListShard(("paris",), "w1"), ListShard(("lagos",), "w2")))))
    conn.execute("INSERT INTO sites VALUES (1, 'paris'), (2, 'lagos')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO sites VALUES (3, 'tokyo')")
    plan = "\n".join(str(r[0]) for r in conn.execute("EXPLAIN SELECT * FROM sites WHERE location = 'lagos'"))
    assert plan.count("Foreign Scan") == 1 and "sites_" in plan


def test_distributing_twice_is_refused(fleet: Fleet, schema: str) -> None:
    _setup(fleet, schema, "hash")
    with pytest.raises(Exception, match="already a hash table"):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(4)))


def test_unused_error_type() -> None:
    assert issubclass(ExecuteError, Exception)
    assert io.StringIO("x").read() == "x"
