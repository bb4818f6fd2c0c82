"""DDL issued on the coordinator by any client reaches every shard; a failure leaves both agreeing."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec


def _shard_columns(fleet: Fleet, schema: str, table: str) -> dict[str, list[str]]:
    """Column names of each shard / copy, read directly on the workers."""
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == QualifiedName(schema, table))
    out = {}
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            out[f"{shard.node}:{shard.shard_table}"] = [str(r[0]) for r in w.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                (sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w),)).fetchall()]
    return out


def _shard_indexes(fleet: Fleet, schema: str, table: str) -> list[str]:
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == QualifiedName(schema, table))
    names = []
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            names += [str(r[0]) for r in w.execute(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = to_regclass(%s) AND NOT indisprimary",
                (sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w),)).fetchall()]
    return names


@pytest.mark.parametrize("kind", ["hash", "reference"])
def test_alter_table_reaches_every_shard(fleet: Fleet, cluster: LocalCluster, schema: str, kind: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, a text)")
    conn.execute("INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 200) g")
    name = QualifiedName(schema, "t")
    if kind == "hash":
        fleet.distribute(DistributeSpec(name, "id", HashSpec(4)))
    else:
        fleet.reference(ReferenceSpec(name))
    # another client (psql-like, autocommit) issues the DDL
    with psycopg.connect(cluster.endpoint("coord").conninfo(), autocommit=True) as other:
        other.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        other.execute("ALTER TABLE t ADD COLUMN b int NOT NULL DEFAULT 7")
        other.execute("ALTER TABLE t RENAME COLUMN a TO label")
        other.execute("ALTER TABLE t DROP COLUMN b")
        other.execute("ALTER TABLE t ADD COLUMN c numeric")
        other.execute("CREATE INDEX t_label_idx ON t (label)")
    for cols in _shard_columns(fleet, schema, "t").values():
        assert cols == ["id", "label", "c"]
    assert len(_shard_indexes(fleet, schema, "t")) == (4 if kind == "hash" else 2)
    conn.execute("INSERT INTO t (id, label, c) VALUES (1000, 'new', 1.5)")
    assert conn.execute("SELECT id, label, c FROM t WHERE id = 1000").fetchone() == (1000, "new", 1.5)
    assert conn.execute("SELECT count(*) FROM t WHERE label LIKE 'x%'").fetchone() == (200,)
    conn.execute("DROP INDEX t_label_idx")
    assert _shard_indexes(fleet, schema, "t") == []


def test_rolled_back_ddl_changes_nothing(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, a text)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(2)))
    with conn.transaction(force_rollback=True):
        conn.execute("ALTER TABLE t DROP COLUMN a")
    for cols in _shard_columns(fleet, schema, "t").values():
        assert cols == ["id", "a"]
    assert conn.execute("SELECT count(*) FROM pgfleet.ddl_queue").fetchone() == (0,)


def test_drop_table_drops_shards_and_catalog(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(2)))
    topo = fleet.topology()
    shards = next(t for t in topo.tables if t.name == QualifiedName(schema, "t")).shards
    conn.execute("DROP TABLE t")
    assert all(t.name != QualifiedName(schema, "t") for t in fleet.topology().tables)
    for shard in shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            found = w.execute("SELECT to_regclass(%s)",
                              (sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w),)).fetchone()
            assert found == (None,)


def test_ddl_with_a_worker_down_is_refused_and_both_agree(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, a text)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    cluster.server("w2").stop(mode="immediate")
    try:
        with pytest.raises(psycopg.Error, match="could not be applied on node w2"):
            conn.execute("ALTER TABLE t ADD COLUMN b int")
        coord_cols = [r[0] for r in conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 AND NOT attisdropped "
            "ORDER BY attnum").fetchall()]
        assert coord_cols == ["id", "a"]
    finally:
        cluster.server("w2").start()
    # w1 had prepared the change: it was rolled back, so every shard still agrees with the coordinator
    for cols in _shard_columns(fleet, schema, "t").values():
        assert cols == ["id", "a"]
    assert conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
    conn.execute("ALTER TABLE t ADD COLUMN b int")
    for cols in _shard_columns(fleet, schema, "t").values():
        assert cols == ["id", "a", "b"]


def test_read_then_alter_in_one_transaction_fails_instead_of_waiting_for_ever(fleet: Fleet, cluster: LocalCluster,
                                                                              schema: str) -> None:
    """The workers' DDL runs at COMMIT on another connection than the transaction's postgres_fdw reads,
    whose locks last until after it: it used to wait for ever. Now one clear error, nothing applied."""
    setup = fleet.conn()
    setup.execute("CREATE TABLE readalter (id bigint PRIMARY KEY, v text)")
    setup.execute("INSERT INTO readalter SELECT g, 'v' FROM generate_series(1, 50) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "readalter"), "id", HashSpec(4)))
    before = _shard_columns(fleet, schema, "readalter")
    conn = psycopg.connect(cluster.endpoint("coord").conninfo())
    try:
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
        conn.execute("SET statement_timeout = '60s'")
        conn.commit()
        assert conn.execute("SELECT count(*) FROM readalter").fetchone() == (50,)
        conn.execute("ALTER TABLE readalter ADD COLUMN extra int")
        with pytest.raises(psycopg.errors.LockNotAvailable, match="own earlier statements") as caught:
            conn.commit()
        assert caught.value.diag.message_hint and "Commit the statements" in caught.value.diag.message_hint
    finally:
        conn.close()
    assert _shard_columns(fleet, schema, "readalter") == before
    cols = setup.execute("SELECT attname FROM pg_attribute WHERE attrelid = 'readalter'::regclass AND attnum > 0 "
                         "AND NOT attisdropped ORDER BY attnum").fetchall()
    assert [c[0] for c in cols] == ["id", "v"]
    setup.execute("ALTER TABLE readalter ADD COLUMN extra int")  # in a transaction of its own it works
    assert all(c[-1] == "extra" for c in _shard_columns(fleet, schema, "readalter").values())
