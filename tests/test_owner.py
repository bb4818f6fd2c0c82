"""A non-superuser owner changes a distributed table through the coordinator, as on one server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

ROLES = ("pgfleet_test_alice", "pgfleet_test_bob")


@pytest.fixture
def roles(fleet: Fleet, schema: str) -> Iterator[dict[str, str]]:
    """Two LOGIN roles with CREATE on the test schema; dropped afterwards with what they own."""
    conn = fleet.conn()
    passwords = {}
    for role in ROLES:
        _drop_role(conn, role)
        passwords[role] = secrets.token_hex(12)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                        sql.Literal(passwords[role])))
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                              sql.Identifier(role)))
    yield passwords
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    for role in ROLES:
        _drop_role(conn, role)


def _drop_role(conn: psycopg.Connection[tuple[object, ...]], role: str) -> None:
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _connect_as(fleet: Fleet, role: str, password: str, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    ep = fleet.coordinator
    conn = psycopg.connect(host=ep.host, port=ep.port, dbname=ep.dbname, user=role, password=password,
                           autocommit=True)
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    return conn


def _shard_columns_and_indexes(fleet: Fleet, table: QualifiedName) -> set[tuple[int, int]]:
    """{(columns, indexes)} over the shard tables of ``table`` on the workers."""
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == table)
    found = set()
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            name = sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w)
            row = w.execute("SELECT (SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                            "AND NOT attisdropped), (SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass)",
                            (name, name)).fetchone()
            assert row is not None
            found.add((int(row[0]), int(row[1])))
    return found


def _foreign_owners(fleet: Fleet, table: QualifiedName) -> set[str]:
    return {str(r[0]) for r in fleet.conn().execute(
        "SELECT DISTINCT pg_get_userbyid(f.relowner) FROM pgfleet.shards s JOIN pgfleet.tables t USING (relid) "
        "JOIN pg_class f ON f.oid = format('%%I.%%I', s.foreign_schema, s.foreign_table)::regclass "
        "WHERE t.schema_name = %s AND t.table_name = %s", (table.schema, table.name)).fetchall()}


def test_owner_alters_indexes_and_drops_a_distributed_table(fleet: Fleet, schema: str,
                                                            roles: dict[str, str]) -> None:
    alice, bob = ROLES
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        conn.execute("CREATE TABLE owned (id bigint PRIMARY KEY, v text)")
    name = QualifiedName(schema, "owned")
    fleet.distribute(DistributeSpec(name, "id", HashSpec(4)))  # as the superuser, through the API
    assert _foreign_owners(fleet, name) == {alice}
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        conn.execute("ALTER TABLE owned ADD COLUMN extra int")
        conn.execute("CREATE INDEX owned_v ON owned (v)")
        conn.execute("ALTER TABLE owned RENAME COLUMN extra TO more")
    assert _shard_columns_and_indexes(fleet, name) == {(3, 2)}
    with _connect_as(fleet, alice, roles[alice], schema) as conn:  # its rows too, through its own user mapping
        conn.execute("INSERT INTO owned (id, v) SELECT g, 'v' || g FROM generate_series(1, 100) g")
        assert conn.execute("SELECT count(*), count(DISTINCT v) FROM owned").fetchone() == (100, 100)
        # nothing beyond: no connection of its own to a worker (dblink is revoked from PUBLIC, and the
        # owner's mapping gives no USAGE on the foreign server)
        with pytest.raises(psycopg.errors.InsufficientPrivilege,
                           match=r"permission denied for (function dblink_connect|foreign server pgfleet_w1)"):
            conn.execute("SELECT public.dblink_connect('mine', 'pgfleet_w1')")
    with _connect_as(fleet, bob, roles[bob], schema) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table owned"):
        conn.execute("SELECT count(*) FROM owned")
    # a new owner, through plain SQL: the foreign partitions follow, and the old owner is refused as on one server
    fleet.conn().execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(schema, "owned"),
                                                                      sql.Identifier(bob)))
    assert _foreign_owners(fleet, name) == {bob}
    with _connect_as(fleet, alice, roles[alice], schema) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege, match='must be owner of table owned'):
        conn.execute("ALTER TABLE owned ADD COLUMN nope int")
    with _connect_as(fleet, bob, roles[bob], schema) as conn:
        conn.execute("ALTER TABLE owned DROP COLUMN more")
        conn.execute("DROP TABLE owned")
    assert all(t.name != name for t in fleet.topology().tables)


def test_owner_alters_a_reference_table(fleet: Fleet, schema: str, roles: dict[str, str]) -> None:
    alice = ROLES[0]
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        conn.execute("CREATE TABLE ref (id int PRIMARY KEY, v text)")
    name = QualifiedName(schema, "ref")
    fleet.reference(ReferenceSpec(name))
    assert _foreign_owners(fleet, name) == {alice}
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        conn.execute("ALTER TABLE ref ADD COLUMN extra int")
        conn.execute("DROP TABLE ref")
    assert all(t.name != name for t in fleet.topology().tables)


def test_owner_cannot_run_what_it_lacks_on_the_workers(fleet: Fleet, schema: str, roles: dict[str, str]) -> None:
    """DDL reaches the workers as pgfleet's account: a default that would run there as that account is refused."""
    alice = ROLES[0]
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        conn.execute("CREATE TABLE owned (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO owned SELECT generate_series(1, 10)")
    name = QualifiedName(schema, "owned")
    fleet.distribute(DistributeSpec(name, "id", HashSpec(2)))
    with _connect_as(fleet, alice, roles[alice], schema) as conn:
        for default in ("pg_terminate_backend(pg_backend_pid())", "length(pg_read_file('postgresql.conf'))::bool"):
            with pytest.raises(psycopg.errors.RaiseException, match="pgfleet: the default of column x calls pg_"):
                conn.execute(f"ALTER TABLE owned ADD COLUMN x bool DEFAULT {default}".encode())
        conn.execute("ALTER TABLE owned ADD COLUMN u uuid DEFAULT gen_random_uuid()")
        assert conn.execute("SELECT count(DISTINCT u) FROM owned").fetchone() == (10,)
    assert _shard_columns_and_indexes(fleet, name) == {(2, 1)}
