"""A pg_dump of the coordinator holds no worker password, and a copy restored elsewhere cannot reach
the live workers: writes there fail, production rows stay as they were."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from plain_server import client, plain_server
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.worker_credentials import read_password, remove_password, store_password
from pgfleet.execute import connect
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec


def _checksum(fleet: Fleet, schema: str, table: str) -> tuple[int, str]:
    row = fleet.conn().execute(sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                                       "FROM {} t").format(sql.Identifier(schema, table))).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@pytest.fixture
def populated(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
    conn.execute("INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 200) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "accounts"), "id", HashSpec(4)))
    conn.execute("CREATE TABLE kinds (id int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO kinds VALUES (1, 'a'), (2, 'b')")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "kinds")))
    return schema


def _worker_copies(fleet: Fleet, schema: str, table: str) -> list[tuple[int, str]]:
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == QualifiedName(schema, table))
    sums = []
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            row = w.execute(sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') "
                                    "FROM {} t").format(sql.Identifier(shard.shard_schema, shard.shard_table))).fetchone()
            assert row is not None
            sums.append((int(row[0]), str(row[1])))
    return sums


def _passwords(cluster: LocalCluster) -> list[str]:
    spec = json.loads((cluster.directory / "cluster.json").read_text())
    found = [str(n["password"]) for n in spec["nodes"]]
    assert found and all(len(p) >= 16 for p in found)
    return found


@pytest.mark.parametrize("foreign_data", [False, True], ids=["plain", "include_foreign_data"])
def test_coordinator_dump_has_no_password_and_its_restore_cannot_write_production(
        fleet: Fleet, cluster: LocalCluster, populated: str, tmp_path: Path, base_dir: Path,
        foreign_data: bool) -> None:
    schema = populated
    before = {t: _checksum(fleet, schema, t) for t in ("accounts", "kinds")}
    copies = _worker_copies(fleet, schema, "kinds")
    assert len(copies) == 2 and all(c == copies[0] for c in copies)
    assert before["accounts"][0] == 200
    dump = tmp_path / "coord.dump"
    extra = ["--include-foreign-data=pgfleet_*"] if foreign_data else []
    client(cluster, "pg_dump", fleet.coordinator, "-Fc", "-f", str(dump), *extra)
    text = client(cluster, "pg_restore", fleet.coordinator, "-f", "-", str(dump)).stdout
    assert "CREATE USER MAPPING" in text  # the mappings are there, with a user name only
    if foreign_data:
        assert "COPY pgfleet_shards." in text or "COPY " in text
    raw = dump.read_bytes() + text.encode()
    leaked = [i for i, password in enumerate(_passwords(cluster)) if password.encode() in raw]
    assert not leaked, "the passwords of these nodes (by position in cluster.json) are in the coordinator's dump"

    with plain_server(cluster, base_dir / f"restored-{tmp_path.name}") as ep:
        client(cluster, "pg_restore", ep, "-d", ep.dbname, str(dump), check=False)  # foreign data cannot load
        with connect(ep) as copy:
            copy.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            assert copy.execute("SELECT count(*) FROM pg_foreign_server WHERE srvname LIKE 'pgfleet\\_%'"
                                ).fetchone() == (len(fleet.topology().workers),)
            for statement in ("UPDATE accounts SET balance = 0",
                              "INSERT INTO accounts VALUES (100000, 1)",
                              "DELETE FROM accounts",
                              "SELECT public.dblink_exec('pgfleet_w1', 'DELETE FROM pg_catalog.pg_class WHERE false')"):
                with _naming(statement), pytest.raises(psycopg.Error, match="no password supplied"):
                    copy.execute(statement)
            # the copy's reference table is its own plain table: a write may change it, never the workers' copies
            try:
                copy.execute("UPDATE kinds SET label = 'changed'")
            except psycopg.Error as exc:
                assert "password" in str(exc) or "pgfleet_w" in str(exc)
    after = {t: _checksum(fleet, schema, t) for t in ("accounts", "kinds")}
    assert after == before
    assert _worker_copies(fleet, schema, "kinds") == copies


@contextmanager
def _naming(statement: str) -> Iterator[None]:
    try:
        yield
    except pytest.fail.Exception as exc:
        raise AssertionError(f"{statement}: {exc}") from None


def test_passwords_kept_in_user_mappings_move_to_passfiles(fleet: Fleet, cluster: LocalCluster, populated: str) -> None:
    """A cluster made by an older pgfleet (password in the user mapping) is converted by install_catalog."""
    conn = fleet.conn()
    password = cluster.spec.primary_of("w1").password
    remove_password(conn, "pgfleet_w1")
    conn.execute("ALTER SERVER pgfleet_w1 OPTIONS (DROP passfile)")
    conn.execute(sql.SQL("ALTER USER MAPPING FOR CURRENT_USER SERVER pgfleet_w1 OPTIONS (ADD password {})").format(
        sql.Literal(password)))
    conn.execute("SELECT public.dblink_disconnect(c) FROM unnest(public.dblink_get_connections()) c")
    before = _checksum(fleet, populated, "accounts")  # works through the mapping's password
    fleet.install_catalog()
    options = conn.execute("SELECT array_agg(o) FROM pg_user_mappings m, unnest(m.umoptions) o "
                           "WHERE m.srvname LIKE 'pgfleet\\_%'").fetchone()
    assert options is not None and not any(str(o).startswith("password=") for o in options[0])
    assert conn.execute("SELECT 'passfile=pgfleet_w1.pgpass' = ANY (srvoptions) FROM pg_foreign_server "
                        "WHERE srvname = 'pgfleet_w1'").fetchone() == (True,)
    node = fleet.topology().node("w1")
    assert node is not None and fleet.endpoint(node).password == password
    with fleet.new_coordinator_conn() as fresh:  # a new session: new postgres_fdw connections
        assert fresh.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(populated, "accounts"))).fetchone() == (before[0],)


def test_a_stored_password_is_in_no_statement_text(fleet: Fleet, cluster: LocalCluster) -> None:
    """The passfile is written from COPY data: with every statement logged, the password is not in the log."""
    password = "pw-in-no-log-" + "x7Q"
    log = cluster.server(cluster.spec.coordinator.name).logfile
    before = log.stat().st_size
    with fleet.new_coordinator_conn() as conn:
        conn.execute("SET log_statement = 'all'")
        store_password(conn, "pgfleet_probe", password)
        assert read_password(conn, "pgfleet_probe") == password
        conn.execute("SELECT 'probe statement logged'")
        remove_password(conn, "pgfleet_probe")
    logged = log.read_bytes()[before:].decode(errors="replace")
    assert "probe statement logged" in logged and "COPY pgfleet_passfile_line FROM STDIN" in logged
    assert password not in logged
