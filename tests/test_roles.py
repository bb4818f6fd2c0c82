"""Roles other than the owner use distributed and reference tables by their grants on the coordinator:
table and column privileges and row-level security apply as on one server, and no role gains a way to
the workers through pgfleet."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from conftest import shard_rows
from pgfleet.cluster.fleet import Fleet
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

READER, STRANGER = "pgfleet_test_reader", "pgfleet_test_stranger"


def drop_role(fleet: Fleet, role: str) -> None:
    conn = fleet.conn()
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def logins(fleet: Fleet, schema: str) -> Iterator[dict[str, str]]:
    """LOGIN roles with USAGE and CREATE on the test schema (and nothing else); dropped afterwards."""
    passwords = {}
    for role in (READER, STRANGER):
        drop_role(fleet, role)
        passwords[role] = secrets.token_hex(12)
        fleet.conn().execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role),
                                                                               sql.Literal(passwords[role])))
        fleet.conn().execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema),
                                                                                     sql.Identifier(role)))
    yield passwords
    fleet.conn().execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    for role in (READER, STRANGER):
        drop_role(fleet, role)


def connect_as(fleet: Fleet, role: str, password: str, schema: str, *, port: int | None = None,
               ) -> psycopg.Connection[tuple[object, ...]]:
    ep = fleet.coordinator
    conn = psycopg.connect(host=ep.host, port=port or ep.port, dbname=ep.dbname, user=role, password=password,
                           autocommit=True)
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    return conn


def make_tables(fleet: Fleet, schema: str) -> None:
    """items (distributed, 8 rows), colors (reference), both owned by the superuser."""
    conn = fleet.conn()
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text, secret text)")
    conn.execute("INSERT INTO items SELECT g, 'n' || g, 's' || g FROM generate_series(1, 8) g")
    conn.execute("CREATE TABLE colors (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO colors VALUES (1, 'red'), (2, 'blue')")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "items"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "colors")))


def test_privileges_are_the_coordinators(fleet: Fleet, schema: str, logins: dict[str, str]) -> None:
    make_tables(fleet, schema)
    conn = fleet.conn()
    conn.execute(sql.SQL("GRANT SELECT ON items, colors TO {}").format(sql.Identifier(READER)))
    conn.execute(sql.SQL("GRANT INSERT (id, name) ON items TO {}").format(sql.Identifier(READER)))
    with connect_as(fleet, READER, logins[READER], schema) as reader:
        assert reader.execute("SELECT count(*), sum(id) FROM items").fetchone() == (8, 36)
        assert reader.execute("SELECT name FROM items WHERE id = 3").fetchone() == ("n3",)
        assert reader.execute("SELECT name FROM colors WHERE id = 2").fetchone() == ("blue",)
        reader.execute("INSERT INTO items (id, name) VALUES (9, 'n9')")  # its column privileges
        for table, statement in (("items", "INSERT INTO items (id, name, secret) VALUES (10, 'n10', 'x')"),
                                 ("items", "DELETE FROM items WHERE id = 9"),
                                 ("colors", "UPDATE colors SET name = 'green' WHERE id = 1")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
                reader.execute(statement.encode())
    with connect_as(fleet, STRANGER, logins[STRANGER], schema) as stranger:
        for table in ("items", "colors"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=f"permission denied for table {table}"):
                stranger.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(table)))
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (9,)


def test_column_privileges_and_row_level_security(fleet: Fleet, schema: str, logins: dict[str, str]) -> None:
    make_tables(fleet, schema)
    conn = fleet.conn()
    conn.execute(sql.SQL("GRANT SELECT (id, name) ON items TO {}").format(sql.Identifier(READER)))
    with connect_as(fleet, READER, logins[READER], schema) as reader:
        assert reader.execute("SELECT id, name FROM items WHERE id = 5").fetchone() == (5, "n5")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table items"):
            reader.execute("SELECT secret FROM items WHERE id = 5")
        conn.execute("ALTER TABLE items ENABLE ROW LEVEL SECURITY")
        conn.execute(sql.SQL("CREATE POLICY low ON items FOR SELECT TO {} USING (id <= 3)").format(
            sql.Identifier(READER)))
        assert reader.execute("SELECT array_agg(id ORDER BY id) FROM items").fetchone() == ([1, 2, 3],)
        assert reader.execute("SELECT count(*) FROM items WHERE id = 5").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM items").fetchone() == (8,)  # the owner is not subject to it


def test_no_way_to_the_workers_through_pgfleet(fleet: Fleet, schema: str, logins: dict[str, str]) -> None:
    """The mapping FOR PUBLIC works only through pgfleet's foreign tables: no USAGE on the servers for anyone."""
    make_tables(fleet, schema)
    conn = fleet.conn()
    servers = conn.execute("SELECT srvname, srvacl FROM pg_foreign_server WHERE srvname LIKE 'pgfleet%'").fetchall()
    assert servers and all(acl is None for _, acl in servers)
    with connect_as(fleet, READER, logins[READER], schema) as reader:
        for statement in ("CREATE FOREIGN TABLE mine (id bigint) SERVER pgfleet_w1",
                          "IMPORT FOREIGN SCHEMA public FROM SERVER pgfleet_w1 INTO {schema}",
                          "CREATE USER MAPPING FOR CURRENT_USER SERVER pgfleet_w1 OPTIONS (user 'postgres')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for foreign server pgfleet_w1"):
                reader.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)))
        for refusal, statement in (
                ("must be owner of foreign server pgfleet_w1",
                 "ALTER USER MAPPING FOR PUBLIC SERVER pgfleet_w1 OPTIONS (SET user 'other')"),
                ("permission denied for schema pgfleet_shards", "SELECT * FROM pgfleet_shards.nothing"),
                ("permission denied for function dblink", "SELECT public.dblink_connect('x', 'pgfleet_w1')")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=refusal):
                reader.execute(statement.encode())


def on_workers(fleet: Fleet, query: str, params: tuple[object, ...] = ()) -> set[tuple[object, ...]]:
    """The distinct rows ``query`` returns over every worker."""
    rows: set[tuple[object, ...]] = set()
    for node in fleet.topology().workers:
        with fleet.worker_conn(node) as w:
            rows.update(tuple(r) for r in w.execute(query.encode(), params).fetchall())
    return rows


def shard_privileges(fleet: Fleet, schema: str, table: str, role: str, privilege: str) -> set[object]:
    """has_table_privilege(role, shard, privilege) over every shard table of ``table``."""
    return {r[0] for r in shard_rows(fleet, QualifiedName(schema, table),
                                     "SELECT has_table_privilege(%(role)s, %(shard)s::regclass, %(priv)s)",
                                     {"role": role, "priv": privilege})}


def test_roles_and_grants_reach_the_shards(fleet: Fleet, schema: str, logins: dict[str, str]) -> None:
    from pgfleet.cluster.privileges import sync_roles

    conn = fleet.conn()
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text, secret text)")
    conn.execute("CREATE TABLE colors (id int PRIMARY KEY, name text)")
    reader = sql.Identifier(READER)
    conn.execute(sql.SQL("GRANT SELECT (id, name) ON items TO {}").format(reader))  # before distributing
    fleet.distribute(DistributeSpec(QualifiedName(schema, "items"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "colors")))
    # the column privilege survived the distribution on the coordinator and reached every shard
    assert conn.execute("SELECT has_column_privilege(%s, 'items', 'name', 'SELECT'), "
                        "has_column_privilege(%s, 'items', 'secret', 'SELECT')", (READER, READER)).fetchone() == (True, False)
    assert on_workers(fleet, "SELECT rolcanlogin, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
                      (READER,)) == {(False, "pgfleet: copy of a coordinator role")}
    assert shard_rows(fleet, QualifiedName(schema, "items"),
                      "SELECT has_column_privilege(%(role)s, %(shard)s::regclass, 'name', 'SELECT'), "
                      "has_column_privilege(%(role)s, %(shard)s::regclass, 'secret', 'SELECT')", {"role": READER}) \
        == {(True, False)}
    # GRANT and REVOKE after distribution, on a distributed and a reference table
    assert shard_privileges(fleet, schema, "colors", READER, "SELECT") == {False}
    conn.execute(sql.SQL("GRANT SELECT, INSERT ON items, colors TO {}").format(reader))
    assert shard_privileges(fleet, schema, "items", READER, "INSERT") == {True}
    assert shard_privileges(fleet, schema, "colors", READER, "SELECT") == {True}
    conn.execute(sql.SQL("REVOKE INSERT ON items FROM {}").format(reader))
    assert shard_privileges(fleet, schema, "items", READER, "INSERT") == {False}
    assert shard_privileges(fleet, schema, "items", READER, "SELECT") == {True}
    # a group role: the grant to the group, and the membership, reach the workers
    conn.execute(sql.SQL("REVOKE ALL ON colors FROM {}").format(reader))
    drop_role(fleet, "pgfleet_test_group")
    conn.execute("CREATE ROLE pgfleet_test_group")
    try:
        conn.execute(sql.SQL("GRANT pgfleet_test_group TO {}").format(reader))
        conn.execute("GRANT UPDATE ON colors TO pgfleet_test_group")
        assert shard_privileges(fleet, schema, "colors", READER, "UPDATE") == {True}
        conn.execute(sql.SQL("REVOKE pgfleet_test_group FROM {}").format(reader))  # no event trigger for roles
        sync_roles(fleet)
        assert shard_privileges(fleet, schema, "colors", READER, "UPDATE") == {False}
        # ALTER TABLE … OWNER TO reaches the shards
        conn.execute(sql.SQL("ALTER TABLE items OWNER TO {}").format(reader))
        assert on_workers(fleet, "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname LIKE 'items\\_%%' "
                                 "AND relnamespace = %s::regnamespace AND relkind = 'r'", (schema,)) == {(READER,)}
        conn.execute("ALTER TABLE items OWNER TO CURRENT_USER")
    finally:
        drop_role(fleet, "pgfleet_test_group")
    sync_roles(fleet)  # a role dropped on the coordinator goes from the workers too
    assert on_workers(fleet, "SELECT rolname FROM pg_roles WHERE rolname = 'pgfleet_test_group'") == set()
    conn.execute(sql.SQL("GRANT SELECT (name) ON items TO {}").format(reader))  # (the owner changes took all)
    fleet.undistribute(QualifiedName(schema, "items"))  # a plain table again, with its column privileges
    assert conn.execute("SELECT has_column_privilege(%s, 'items', 'name', 'SELECT'), "
                        "has_column_privilege(%s, 'items', 'secret', 'SELECT')", (READER, READER)).fetchone() == (True, False)


def test_two_role_copies_at_once(fleet: Fleet) -> None:
    """Two sessions copy the same new role to a worker at once (each router process copies after its
    clients' CREATE ROLE, the refresh too): the second waits for the first's commit and then finds the role
    made, without an error (it met pg_authid's unique index: 23505, which the copy did not expect)."""

    role = "pgfleet_test_concurrent"
    drop_role(fleet, role)
    fleet.conn().execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        statement = fleet.conn().execute("SELECT pgfleet.role_sync_sql()").fetchone()[0]
        worker = fleet.topology().workers[0]
        with fleet.worker_conn(worker, autocommit=False) as first, fleet.worker_conn(worker) as second:
            first.execute(statement)  # the role made, not yet committed
            errors: list[BaseException] = []

            def copy() -> None:
                try:
                    second.execute(statement)  # waits for the first on pg_authid's unique index
                except BaseException as exc:  # reported by the assertion below
                    errors.append(exc)

            waiting = threading.Thread(target=copy)
            waiting.start()
            waiting.join(1.0)
            assert waiting.is_alive()  # it waits for the first transaction
            first.commit()
            waiting.join(30)
            assert errors == []
            assert second.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone() == (1,)
    finally:
        drop_role(fleet, role)  # the next copy of roles drops it on the worker (it carries pgfleet's marker)
