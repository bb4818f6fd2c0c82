"""The router routes every database of the coordinator that holds a pgfleet catalog, not only the main one:
its first session reads that database's catalog, the workers are reached in their database of the same
name, two-phase commits record their decisions in that database, and recovery visits it. A database
without a catalog is relayed to the coordinator."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import routing_router
from pgfleet.cluster.databases import attach_database
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName


def _drop_everywhere(fleet: Fleet, cluster: LocalCluster, name: str) -> None:
    for node in ["coord", *(w.name for w in fleet.topology().workers)]:
        with psycopg.connect(cluster.endpoint(node).conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def shop_db(fleet: Fleet, cluster: LocalCluster) -> Iterator[Fleet]:
    """Another database with a catalog and a distributed table ``orders`` (and its plain twin)."""
    name = "shop_" + secrets.token_hex(3)
    fleet.conn().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    shop = attach_database(fleet, name)
    try:
        for t in ("orders", "twin"):
            shop.conn().execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, amount int NOT NULL)".encode())
            shop.conn().execute(f"INSERT INTO {t} SELECT g, g FROM generate_series(1, 100) g".encode())
        shop.distribute(DistributeSpec(QualifiedName("public", "orders"), "id", HashSpec(4)))
        yield shop
    finally:
        shop.close()
        _drop_everywhere(fleet, cluster, name)


def _connect(cluster: LocalCluster, port: int, dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=port, dbname=dbname, user=cluster.spec.superuser,
                           password=cluster.spec.coordinator.password, autocommit=True)


def _rows(conn: psycopg.Connection[Any], stmt: str) -> object:
    try:
        cur = conn.execute(stmt.encode())
        return sorted(cur.fetchall()) if cur.description else cur.rowcount
    except psycopg.Error as exc:
        return exc.sqlstate


def test_a_second_database_is_routed(cluster: LocalCluster, shop_db: Fleet) -> None:
    dbname = shop_db.coordinator.dbname
    with routing_router(cluster) as router, _connect(cluster, router.config.port, dbname) as conn:
        stats = router.context.stats
        statements = [
            "SELECT amount FROM {t} WHERE id = 7",
            "UPDATE {t} SET amount = amount + 1 WHERE id = 7 RETURNING amount",
            "INSERT INTO {t} VALUES (500, 5), (501, 6), (502, 7) RETURNING id",  # several shards, one statement
            "UPDATE {t} SET amount = amount * 2 WHERE amount > 90 RETURNING id, amount",
            "SELECT count(*), sum(amount) FROM {t}",
            "INSERT INTO {t} VALUES (7, 0)",  # the primary key, on the worker: 23505
        ]
        for stmt in statements:
            before = stats.routed
            got = _rows(conn, stmt.replace("{t}", "orders"))
            assert stats.routed == before + 1, stmt  # run by the router on the workers of this database
            assert got == _rows(conn, stmt.replace("{t}", "twin")), stmt
        # a transaction over two workers: two-phase, its decision in this database's catalog
        for t in ("orders", "twin"):
            with conn.transaction():
                for key in range(1, 9):
                    conn.execute(f"UPDATE {t} SET amount = amount - 1 WHERE id = %s".encode(), (key,))
        assert _rows(conn, "SELECT id, amount FROM orders") == _rows(conn, "SELECT id, amount FROM twin")
        assert router.context.others[dbname][0] is not None
        assert any(name.endswith(f"/{dbname}") for name in router.status()["pools"])
    # the rows are in the shards, in the workers' database of that name
    with shop_db.conn() as direct:
        assert direct.execute("SELECT sum(amount) FROM orders").fetchone() == \
            direct.execute("SELECT sum(amount) FROM twin").fetchone()


def test_a_database_without_a_catalog_is_relayed(fleet: Fleet, cluster: LocalCluster) -> None:
    name = "plain_" + secrets.token_hex(3)
    fleet.conn().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with routing_router(cluster) as router, _connect(cluster, router.config.port, name) as conn:
            conn.execute(b"CREATE TABLE t (id int PRIMARY KEY)")
            before = router.context.stats.routed
            conn.execute(b"INSERT INTO t VALUES (1)")
            assert conn.execute(b"SELECT current_database(), count(*) FROM t").fetchone() == (name, 1)
            assert router.context.stats.routed == before
            assert router.context.others[name][0] is None
    finally:
        _drop_everywhere(fleet, cluster, name)


def test_recovery_visits_every_database(cluster: LocalCluster, shop_db: Fleet) -> None:
    """A prepared transaction a dead router left in the second database is rolled back there."""
    dbname = shop_db.coordinator.dbname
    worker = shop_db.topology().workers[0]
    gid = "pgfleet_rt_0_99999999_1_1"  # process 99999999: not alive
    with shop_db.worker_conn(worker) as w:
        w.autocommit = False
        w.execute(b"SELECT 1")
        w.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        w.autocommit = True
    with routing_router(cluster, recovery_interval=0.3, recovery_min_age=0.5) as router:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with shop_db.worker_conn(worker) as w:
                left = w.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s AND database = %s",
                                 (gid, dbname)).fetchone()
            if left == (0,):
                break
            time.sleep(0.2)
        assert left == (0,), "the prepared transaction in the second database was left"
        assert router.context.stats.recovered_aborts >= 1
