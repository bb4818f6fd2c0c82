"""Existing servers join by connection string; the topology is exported and re-applied elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_cluster, pgfleet_cli
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.topofile import import_topology
from pgfleet.errors import TopologyError

QUERIES = [
    "SELECT count(*), sum(v) FROM orders",
    "SELECT o.id, o.v, c.name FROM orders o JOIN customers c ON c.id = o.customer ORDER BY o.id LIMIT 20",
    "SELECT * FROM customers ORDER BY id",
]


@pytest.fixture(scope="module")
def trio(base_dir: Path) -> tuple[LocalCluster, LocalCluster, LocalCluster]:
    """Cluster B (coordinator + w1), an existing server E, and an empty coordinator C."""
    b = make_cluster(base_dir / "topo_b", workers=1)
    e = make_cluster(base_dir / "topo_e", workers=0)
    c = make_cluster(base_dir / "topo_c", workers=0)
    yield b, e, c
    for x in (b, e, c):
        x.destroy()


def test_existing_server_joins_and_topology_moves_to_a_new_coordinator(
        trio: tuple[LocalCluster, LocalCluster, LocalCluster], tmp_path: Path) -> None:
    b, e, c = trio
    ext = e.endpoint("coord")
    added = pgfleet_cli("node", "add", "ext", "--dsn",
                        f"host={ext.host} port={ext.port} dbname={ext.dbname} user={ext.user}",
                        directory=b.directory, env={"PGPASSWORD": ext.password or ""})
    assert added.returncode == 0, added.stderr
    fleet_b = Fleet(b.endpoint("coord"), b)
    conn = fleet_b.conn()
    conn.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
    conn.execute("INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g")
    conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, customer int NOT NULL, v int)")
    conn.execute("INSERT INTO orders (customer, v) SELECT 1 + g % 50, g FROM generate_series(1, 5000) g")
    for args in (["distribute", "orders", "--key", "id", "--shards", "6", "--nodes", "w1,ext"],
                 ["reference", "customers"]):
        proc = pgfleet_cli(*args, directory=b.directory)
        assert proc.returncode == 0, proc.stderr
    topo = fleet_b.topology()
    assert {s.node for t in topo.tables for s in t.shards} == {"w1", "ext"}
    expected = [conn.execute(q.encode()).fetchall() for q in QUERIES]

    exported = tmp_path / "topology.json"
    proc = pgfleet_cli("export", str(exported), directory=b.directory)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(exported.read_text())
    assert "password" not in exported.read_text()
    assert {t["name"]: t["method"] for t in data["tables"]} == {"customers": "reference", "orders": "hash"}

    # A new coordinator: nodes must be registered first (passwords are not exported) ...
    fleet_c = Fleet(c.endpoint("coord"), c)
    with pytest.raises(TopologyError, match=r"node .* is not registered"):
        import_topology(fleet_c, data)
    fleet_c.add_node("w1", b.endpoint("w1"))
    fleet_c.add_node("ext", ext)
    summary = import_topology(fleet_c, data)
    assert "imported 2 table(s)" in summary
    got = [fleet_c.conn().execute(q.encode()).fetchall() for q in QUERIES]
    assert got == expected
    # ... and it is a working cluster: writes through the new coordinator reach shards and copies
    fleet_c.conn().execute("INSERT INTO customers VALUES (51, 'new')")
    fleet_c.conn().execute("INSERT INTO orders (id, customer, v) VALUES (100000, 51, 1)")
    assert fleet_b.conn().execute("SELECT count(*) FROM orders WHERE customer = 51").fetchone() == (1,)
    # importing again changes nothing
    assert "imported 0 table(s); already present" in import_topology(fleet_c, data)
    fleet_b.close()
    fleet_c.close()


def test_new_worker_gets_every_reference_table(base_dir: Path) -> None:
    b = make_cluster(base_dir / "refadd", workers=1)
    e = make_cluster(base_dir / "refadd_e", workers=0)
    try:
        fleet = Fleet(b.endpoint("coord"), b)
        conn = fleet.conn()
        conn.execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
        conn.execute("INSERT INTO countries VALUES ('fr', 'France'), ('ng', 'Nigeria')")
        from pgfleet.spec import QualifiedName, ReferenceSpec

        fleet.reference(ReferenceSpec(QualifiedName("public", "countries")))
        fleet.add_node("ext", e.endpoint("coord"))
        conn.execute("INSERT INTO countries VALUES ('it', 'Italy')")
        with fleet.worker_conn(fleet.topology().node("ext")) as w:  # type: ignore[arg-type]
            assert w.execute("SELECT code FROM countries ORDER BY 1").fetchall() == [("fr",), ("it",), ("ng",)]
        assert sorted(s.node for t in fleet.topology().tables for s in t.shards) == ["ext", "w1"]
        fleet.close()
    finally:
        b.destroy()
        e.destroy()
