"""status, dump, export and import over every coordinator database that holds distributed tables: status
shows them all (--database one), dump/export --all-databases write one file per database into a
directory that import --all-databases reads back."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import pgfleet_cli
from plain_server import client, plain_server
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.execute import connect


def _drop_everywhere(fleet: Fleet, cluster: LocalCluster, name: str) -> None:
    for node in ["coord", *(w.name for w in fleet.topology().workers)]:
        with psycopg.connect(cluster.endpoint(node).conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def second_db(fleet: Fleet, cluster: LocalCluster) -> Iterator[str]:
    """A second coordinator database with a distributed table (items, 300 rows) and a reference table
    (colors); the main database gets a distributed table (main_t, 200 rows) in the test's schema."""
    name = "other_" + secrets.token_hex(3)
    fleet.conn().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with _coord(cluster, name) as conn:
            conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
            conn.execute("INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 300) g")
            conn.execute("CREATE TABLE colors (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO colors VALUES (1, 'red'), (2, 'blue')")
        d = cluster.directory
        for args in (("distribute", "items", "--key", "id", "--shards", "3"), ("reference", "colors")):
            done = pgfleet_cli(*args, "--database", name, directory=d)
            assert done.returncode == 0, done.stderr
        yield name
    finally:
        _drop_everywhere(fleet, cluster, name)


@pytest.fixture
def main_table(fleet: Fleet, cluster: LocalCluster, schema: str) -> str:
    fleet.conn().execute("CREATE TABLE main_t (id int PRIMARY KEY, n int)")
    fleet.conn().execute("INSERT INTO main_t SELECT g, g * 2 FROM generate_series(1, 200) g")
    done = pgfleet_cli("distribute", f"{schema}.main_t", "--key", "id", "--shards", "2", directory=cluster.directory)
    assert done.returncode == 0, done.stderr
    return f"{schema}.main_t"


def _coord(cluster: LocalCluster, dbname: str) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.endpoint("coord").conninfo(), dbname=dbname, autocommit=True)


def _one_line_error(proc: Any, text: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line and text in line, line
    return str(line)


def test_status_shows_the_tables_of_every_database(fleet: Fleet, cluster: LocalCluster, second_db: str,
                                                   main_table: str) -> None:
    d = cluster.directory
    st = pgfleet_cli("status", "--json", directory=d)
    assert st.returncode == 0, st.stderr
    report = json.loads(st.stdout)
    assert report["databases"][0] == "postgres" and second_db in report["databases"]
    tables = {(t["database"], t["name"]): t for t in report["tables"]}
    assert tables[("postgres", main_table)]["shards"] == 2
    assert tables[(second_db, "public.items")]["shards"] == 3 and tables[(second_db, "public.items")]["bytes"] > 0
    assert tables[(second_db, "public.colors")]["method"] == "reference"
    assert ("postgres", "public.items") not in tables
    # each node once, its shard count over both databases as their catalogs hold it
    names = [n["name"] for n in report["nodes"]]
    assert sorted(names) == sorted(set(names)) == ["coord", "w1", "w2"]
    for dbname in report["databases"]:
        with _coord(cluster, dbname) as conn:
            for node, count in conn.execute("SELECT node, count(*) FROM pgfleet.shards GROUP BY 1").fetchall():
                tables_count = sum(1 for t in report["tables"] if t["database"] == dbname for s in t["shard_sizes"]
                                   if s["node"] == node)
                assert tables_count == count
    per_node = {n["name"]: n["shards"] for n in report["nodes"]}
    assert per_node["w1"] + per_node["w2"] == sum(t["shards"] for t in report["tables"])

    text = pgfleet_cli("status", directory=d)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(second_db in line and "public.items" in line for line in lines), text.stdout
    assert any("postgres" in line and main_table in line for line in lines), text.stdout

    # --database: that database's tables only (before or after the command)
    for args in (("status", "--json", "--database", second_db), ("--database", second_db, "status", "--json")):
        only = pgfleet_cli(*args, directory=d)
        assert only.returncode == 0, only.stderr
        one = json.loads(only.stdout)
        assert one["databases"] == [second_db]
        assert {(t["database"], t["name"]) for t in one["tables"]} == {(second_db, "public.items"),
                                                                      (second_db, "public.colors")}
        assert sorted(n["name"] for n in one["nodes"]) == ["coord", "w1", "w2"]


def test_status_of_an_unknown_database_is_one_clear_error(fleet: Fleet, cluster: LocalCluster) -> None:
    d = cluster.directory
    line = _one_line_error(pgfleet_cli("status", "--database", "nowhere_db", directory=d),
                           "database nowhere_db does not exist on the coordinator")
    assert "postgres" in line  # where the distributed tables are
    as_json = pgfleet_cli("status", "--json", "--database", "nowhere_db", directory=d)
    assert as_json.returncode == 1
    assert "database nowhere_db does not exist" in json.loads(as_json.stdout)["error"]
    # a database without distributed tables: said so, and status does not install a catalog into it
    plain = "plain_" + secrets.token_hex(3)
    fleet.conn().execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(plain)))
    try:
        for command in (("status",), ("dump", str(d / "x.dump")), ("export", str(d / "x.json"))):
            _one_line_error(pgfleet_cli(*command, "--database", plain, directory=d),
                            f"database {plain} holds no distributed tables")
        with _coord(cluster, plain) as conn:
            assert conn.execute("SELECT to_regnamespace('pgfleet')").fetchone() == (None,)
        assert not (d / "x.dump").exists() and not (d / "x.json").exists()
    finally:
        _drop_everywhere(fleet, cluster, plain)
    _one_line_error(pgfleet_cli("dump", "--database", "nowhere_db", str(d / "y.dump"), directory=d),
                    "database nowhere_db does not exist on the coordinator")
    _one_line_error(pgfleet_cli("export", "--all-databases", "--database", "postgres", str(d / "z"), directory=d),
                    "--database and --all-databases exclude each other")


def test_dump_all_databases_restores_each_into_a_plain_server(fleet: Fleet, cluster: LocalCluster, second_db: str,
                                                              main_table: str, tmp_path: Path,
                                                              base_dir: Path) -> None:
    d = cluster.directory
    target = tmp_path / "dumps"
    (target / "junk").mkdir(parents=True)
    _one_line_error(pgfleet_cli("dump", "--all-databases", str(target), directory=d), "is not an empty directory")
    assert [p.name for p in target.iterdir()] == ["junk"]
    (target / "junk").rmdir()
    done = pgfleet_cli("dump", "--all-databases", str(target), directory=d)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir()) == sorted(["postgres.dump", f"{second_db}.dump"])
    assert f"database {second_db}: dump written to {target / (second_db + '.dump')}" in done.stdout, done.stdout
    assert f"database postgres: dump written to {target / 'postgres.dump'}" in done.stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left
    queries = {second_db: ["SELECT count(*), sum(id), max(v) FROM items",
                           "SELECT string_agg(name, ',' ORDER BY id) FROM colors"],
               "postgres": [f"SELECT count(*), sum(n) FROM {main_table}"]}
    want = {}
    for dbname, qs in queries.items():
        with _coord(cluster, dbname) as conn:
            want[dbname] = [conn.execute(q.encode()).fetchone() for q in qs]
    assert want[second_db][0] == (300, 45150, "v99") and want["postgres"][0] == (200, 40200)
    with plain_server(cluster, base_dir / f"plain-{tmp_path.name}") as ep:
        with connect(ep) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(second_db)))
        for dbname, qs in queries.items():
            there = replace(ep, dbname=dbname)
            client(cluster, "pg_restore", there, "-d", dbname, "--exit-on-error", str(target / f"{dbname}.dump"))
            with connect(there) as restored:
                assert [restored.execute(q.encode()).fetchone() for q in qs] == want[dbname]
                assert restored.execute("SELECT count(*) FROM pg_foreign_server").fetchone() == (0,)
                kinds = restored.execute("SELECT relkind FROM pg_class WHERE relname = 'items'").fetchall()
                assert kinds == ([("r",)] if dbname == second_db else [])


def _forget(cluster: LocalCluster, dbname: str, table: str) -> None:
    """The coordinator database loses a distributed table and its catalog rows; its shards stay."""
    with _coord(cluster, dbname) as conn, conn.transaction():
        conn.execute("SELECT set_config('pgfleet.internal', 'on', true)")
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()
        assert oid is not None
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(*table.split("."))))
        conn.execute("DELETE FROM pgfleet.tables WHERE relid = %s", (oid[0],))


def test_export_all_databases_and_import_them_back(fleet: Fleet, cluster: LocalCluster, second_db: str,
                                                   main_table: str, tmp_path: Path) -> None:
    d = cluster.directory
    target = tmp_path / "topology"
    done = pgfleet_cli("export", "--all-databases", str(target), directory=d)
    assert done.returncode == 0, done.stderr
    assert f"database {second_db}: topology written to {target / (second_db + '.json')}" in done.stdout, done.stdout
    assert sorted(p.name for p in target.iterdir()) == sorted(["postgres.json", f"{second_db}.json"])
    other = json.loads((target / f"{second_db}.json").read_text())
    assert other["database"] == second_db
    assert {t["name"] for t in other["tables"]} == {"items", "colors"}
    assert "password" not in (target / f"{second_db}.json").read_text()
    main = json.loads((target / "postgres.json").read_text())
    main["tables"] = [t for t in main["tables"] if f"{t['schema']}.{t['name']}" == main_table]
    (target / "postgres.json").write_text(json.dumps(main))

    _forget(cluster, "postgres", main_table)
    _forget(cluster, second_db, "public.items")
    # a file that does not match its workers: nothing is imported, in no database
    good = (target / f"{second_db}.json").read_text()
    spoiled = json.loads(good)
    next(t for t in spoiled["tables"] if t["name"] == "items")["shards"][0]["shard_table"] = "no_such_shard"
    (target / f"{second_db}.json").write_text(json.dumps(spoiled))
    line = _one_line_error(pgfleet_cli("import", "--all-databases", str(target), directory=d),
                           f"the import of database {second_db} failed")
    assert "no_such_shard" in line
    with _coord(cluster, "postgres") as conn:
        assert conn.execute("SELECT to_regclass(%s)", (main_table,)).fetchone() == (None,)

    (target / f"{second_db}.json").write_text(good)
    back = pgfleet_cli("import", "--all-databases", str(target), directory=d)
    assert back.returncode == 0, back.stderr
    assert f"database {second_db}: imported 1 table(s): public.items; already present: public.colors" in back.stdout
    assert f"database postgres: imported 1 table(s): {main_table}" in back.stdout
    with _coord(cluster, second_db) as conn:
        assert conn.execute("SELECT count(*), sum(id) FROM items").fetchone() == (300, 45150)
    with _coord(cluster, "postgres") as conn:
        assert conn.execute(f"SELECT count(*), sum(n) FROM {main_table}".encode()).fetchone() == (200, 40200)
    # a directory without --all-databases, and a database that does not exist on this coordinator
    _one_line_error(pgfleet_cli("import", str(target), directory=d), "is a directory")
    other["database"] = "gone_db"
    (target / f"{second_db}.json").write_text(json.dumps(other))
    _one_line_error(pgfleet_cli("import", "--all-databases", str(target), directory=d),
                    "database gone_db does not exist on the coordinator; nothing was imported")
