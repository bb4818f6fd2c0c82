"""Every database of the coordinator can hold distributed tables: `--database` on the CLI, the shards in
the database of the same name on each worker, pgbench's own tables included."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql

from conftest import pgfleet_cli
from pgfleet.cluster.databases import catalog_databases
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import SpecError
from pgfleet.ha.failover import _repoint


@pytest.fixture
def bench_db(fleet: Fleet, cluster: LocalCluster) -> Iterator[str]:
    name = "bench_" + secrets.token_hex(3)
    fleet.conn().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    for node in ["coord", *(w.name for w in fleet.topology().workers)]:
        with psycopg.connect(cluster.endpoint(node).conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_pgbench_tables_in_another_database(fleet: Fleet, cluster: LocalCluster, bench_db: str) -> None:
    d = cluster.directory
    init = pgfleet_cli("pgbench", "--database", bench_db, "-i", "-q", directory=d)
    assert init.returncode == 0, init.stderr
    done = pgfleet_cli("distribute", "--database", bench_db, "pgbench_accounts", "aid", "--shards", "4", directory=d)
    assert done.returncode == 0, done.stderr
    assert "100000 rows moved and verified" in done.stdout
    ref = pgfleet_cli("--database", bench_db, "reference", "pgbench_branches", directory=d)  # before the command too
    assert ref.returncode == 0, ref.stderr
    run = pgfleet_cli("pgbench", "--database", bench_db, "-n", "-t", "20", "-c", "2", directory=d)
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout
    coordinator = fleet.coordinator
    with psycopg.connect(host=coordinator.host, port=coordinator.port, dbname=bench_db, user=coordinator.user,
                         password=coordinator.password, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), sum(abalance) FROM pgbench_accounts").fetchone() == \
            conn.execute("SELECT 100000, sum(delta) FROM pgbench_history").fetchone()
        assert conn.execute("SELECT count(*) FROM pgfleet.shards s JOIN pgfleet.tables t USING (relid) "
                            "WHERE t.table_name = 'pgbench_accounts'").fetchone() == (4,)
    # the shards are in the database of the same name on the workers; the main database has no such table
    for node in fleet.topology().workers:
        with psycopg.connect(cluster.endpoint(node.name).conninfo(), autocommit=True) as w:
            assert w.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (bench_db,)).fetchone() == (1,)
    assert all(t.name.name != "pgbench_accounts" for t in fleet.topology().tables)
    assert bench_db in catalog_databases(fleet.coordinator) and "postgres" in catalog_databases(fleet.coordinator)
    with Fleet.open(cluster.directory, bench_db) as other:
        assert {t.name.name for t in other.topology().tables} == {"pgbench_accounts", "pgbench_branches"}
    # a failover repoints the foreign server in every database with a catalog, not only the main one
    w1 = cluster.node("w1")
    try:
        _repoint(cluster, "w1", replace(w1, port=1))
        for dbname in ("postgres", bench_db):
            with psycopg.connect(cluster.endpoint("coord").conninfo(), dbname=dbname, autocommit=True) as conn:
                assert conn.execute("SELECT port FROM pgfleet.nodes WHERE name = 'w1'").fetchone() == (1,)
                assert conn.execute("SELECT 'port=1' = ANY (srvoptions) FROM pg_foreign_server "
                                    "WHERE srvname = 'pgfleet_w1'").fetchone() == (True,)
    finally:
        _repoint(cluster, "w1", w1)


def test_a_database_that_does_not_exist(cluster: LocalCluster) -> None:
    with pytest.raises(SpecError, match="database nowhere_db does not exist on the coordinator"):
        Fleet.open(cluster.directory, "nowhere_db")
