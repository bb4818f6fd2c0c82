"""Reference tables stay identical on every worker; the demo runs the seeds' scenarios end to end."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from conftest import pgfleet_cli
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import QualifiedName, ReferenceSpec


def _copies(fleet: Fleet, schema: str, table: str) -> dict[str, list[tuple[object, ...]]]:
    topo = fleet.topology()
    out = {}
    for w in topo.workers:
        with fleet.worker_conn(w) as conn:
            out[w.name] = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY 1").format(
                sql.Identifier(schema, table))).fetchall()
    return out


def test_writes_reach_every_copy(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE ref (code text PRIMARY KEY, label text, n int DEFAULT 0)")
    conn.execute("INSERT INTO ref VALUES ('a', 'A', 1), ('b', 'B', 2)")
    assert fleet.reference(ReferenceSpec(QualifiedName(schema, "ref"))) == 2
    conn.execute("INSERT INTO ref (code, label) VALUES ('c', 'C'), ('d', 'D')")
    conn.execute("UPDATE ref SET n = n + 10 WHERE code IN ('a', 'c')")
    conn.execute("UPDATE ref SET code = 'bb' WHERE code = 'b'")  # primary key change
    conn.execute("DELETE FROM ref WHERE code = 'd'")
    with conn.cursor().copy("COPY ref FROM STDIN") as cp:
        cp.write("e\tE\t5\n")
    local = conn.execute("SELECT * FROM ref ORDER BY 1").fetchall()
    assert local == [("a", "A", 11), ("bb", "B", 2), ("c", "C", 10), ("e", "E", 5)]
    assert _copies(fleet, schema, "ref") == {"w1": local, "w2": local}
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM ref")
    assert _copies(fleet, schema, "ref") == {"w1": local, "w2": local}
    conn.execute("TRUNCATE ref")
    assert _copies(fleet, schema, "ref") == {"w1": [], "w2": []}


def test_write_with_a_copy_unreachable_is_refused_everywhere(fleet: Fleet, cluster: LocalCluster,
                                                            schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE ref (id int PRIMARY KEY)")
    conn.execute("INSERT INTO ref VALUES (1)")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "ref")))
    cluster.server("w2").stop(mode="immediate")
    try:
        with pytest.raises(psycopg.OperationalError):
            conn.execute("INSERT INTO ref VALUES (2)")
        assert conn.execute("SELECT id FROM ref").fetchall() == [(1,)]  # reads still work
    finally:
        cluster.server("w2").start()
    assert _copies(fleet, schema, "ref") == {"w1": [(1,)], "w2": [(1,)]}


def test_demo_runs_the_seeds(cluster: LocalCluster) -> None:
    proc = pgfleet_cli("demo", directory=cluster.directory)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    # the lagos query touches exactly one (foreign) scan: the lagos shard
    lagos = text.split("touches only the lagos shard")[1].split("Lends with")[0]
    assert lagos.count("Foreign Scan on booksample_") == 1
    assert text.count("INNER JOIN") == 2  # the co-located join runs per site
    assert "wii-u" in text and "distribution key cannot move" in text
    for name in ("playstation", "xbox", "saturn", "Things Fall Apart"):
        assert name in text
    again = pgfleet_cli("demo", directory=cluster.directory)
    assert again.returncode == 0, again.stderr
