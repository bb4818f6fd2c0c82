"""Foreign keys of distributed tables are enforced on the workers, shard by shard: to a reference table
(present when the table is distributed), and between co-located tables on their keys
(pgfleet.add_foreign_key); one that cannot be enforced is refused, saying what would make it work."""

from __future__ import annotations

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.errors import SpecError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec


def test_a_key_to_a_reference_table_is_enforced_on_the_shards(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE countries (code text PRIMARY KEY, name text)")
    conn.execute("INSERT INTO countries VALUES ('FR', 'France'), ('NG', 'Nigeria')")
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, country text REFERENCES countries ON DELETE RESTRICT, "
                 "alt_country text REFERENCES countries DEFERRABLE INITIALLY DEFERRED)")
    conn.execute("INSERT INTO orders SELECT g, CASE WHEN g % 2 = 0 THEN 'FR' ELSE 'NG' END FROM generate_series(1, 50) g")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "countries")))  # referenced by a plain table: fine
    fleet.distribute(DistributeSpec(QualifiedName(schema, "orders"), "id", HashSpec(4)))
    assert conn.execute("SELECT name, columns, on_delete, deferral FROM pgfleet.foreign_keys WHERE relid = 'orders'::regclass "
                        "ORDER BY name").fetchall() == [
        ("orders_alt_country_fkey", ["alt_country"], "NO ACTION", "DEFERRABLE INITIALLY DEFERRED"),
        ("orders_country_fkey", ["country"], "RESTRICT", "NOT DEFERRABLE")]
    with conn.transaction():  # the deferred key is checked at COMMIT on the shard, as on one server
        conn.execute("INSERT INTO orders VALUES (60, 'FR', 'XX')")
        conn.execute("UPDATE orders SET alt_country = 'NG' WHERE id = 60")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_alt_country_fkey"), conn.transaction():
        conn.execute("INSERT INTO orders VALUES (61, 'FR', 'XX')")
    conn.execute("INSERT INTO orders VALUES (51, 'FR')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_country_fkey"):
        conn.execute("INSERT INTO orders VALUES (52, 'XX')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_country_fkey"):
        conn.execute("UPDATE orders SET country = 'XX' WHERE id = 7")
    with pytest.raises(psycopg.Error, match="orders_country_fkey"):  # a copy refuses at COMMIT: nothing happens
        conn.execute("DELETE FROM countries WHERE code = 'NG'")
    assert conn.execute("SELECT count(*) FROM countries").fetchone() == (2,)
    conn.execute("INSERT INTO countries VALUES ('GH', 'Ghana')")  # committed first, then referenced
    conn.execute("INSERT INTO orders VALUES (53, 'GH')")
    # the catalog follows the columns: a renamed column keeps its key, a dropped one takes it along
    conn.execute("ALTER TABLE orders RENAME COLUMN country TO country_code")
    conn.execute("ALTER TABLE orders DROP COLUMN alt_country")
    assert conn.execute("SELECT name, columns FROM pgfleet.foreign_keys WHERE relid = 'orders'::regclass").fetchall() == [
        ("orders_country_fkey", ["country_code"])]
    # undistributed, the plain table gets its foreign key back on the coordinator
    fleet.undistribute(QualifiedName(schema, "orders"))
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_country_fkey"):
        conn.execute("INSERT INTO orders VALUES (54, 'XX')")


def test_co_located_tables_on_their_keys(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, note text)")
    conn.execute("CREATE TABLE items (order_id bigint, n int, sku text, PRIMARY KEY (order_id, n))")
    conn.execute("INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 20) g")
    conn.execute("INSERT INTO items SELECT g, 1, 's' FROM generate_series(1, 20) g")
    orders, items = QualifiedName(schema, "orders"), QualifiedName(schema, "items")
    fleet.distribute(DistributeSpec(orders, "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(items, "order_id", colocate_with=orders))
    with pytest.raises(psycopg.Error, match="there is no unique constraint matching given keys"):
        conn.execute("ALTER TABLE items ADD FOREIGN KEY (order_id) REFERENCES orders (id)")  # PostgreSQL's refusal
    conn.execute("SELECT pgfleet.add_foreign_key('items', 'items_order_fk', ARRAY['order_id'], 'orders', ARRAY['id'], "
                 "on_delete => 'cascade')")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="items_order_fk"):
        conn.execute("INSERT INTO items VALUES (99, 1, 'x')")
    with conn.transaction():  # the order and its items in one transaction: one worker transaction holds both
        conn.execute("INSERT INTO orders VALUES (100, 'new')")
        conn.execute("INSERT INTO items VALUES (100, 1, 'x'), (100, 2, 'y')")
    conn.execute("DELETE FROM orders WHERE id IN (3, 100)")
    assert conn.execute("SELECT count(*) FROM items WHERE order_id IN (3, 100)").fetchone() == (0,)
    with pytest.raises(SpecError, match=f"foreign key items_order_fk of {schema}.items references {schema}.orders"):
        fleet.undistribute(orders)
    conn.execute("SELECT pgfleet.drop_foreign_key('items', 'items_order_fk')")
    conn.execute("INSERT INTO items VALUES (99, 1, 'x')")
    fleet.undistribute(orders)


@pytest.mark.parametrize(("setup", "call", "message"), [
    ("CREATE TABLE p (id int PRIMARY KEY); CREATE TABLE c (id bigint PRIMARY KEY, p int REFERENCES p)",
     "distribute c", "foreign key c_p_fkey of {s}.c references {s}.p, whose rows are only on the coordinator"),
    ("CREATE TABLE p (id bigint PRIMARY KEY); CREATE TABLE c (id bigint PRIMARY KEY, p bigint);"
     "SELECT pgfleet.distribute_table('p', 'id', 4)", "add c_p p", "foreign key c_p of {s}.c references {s}.p, "
     "which is not co-located with it"),
    ("CREATE TABLE p (id bigint PRIMARY KEY); CREATE TABLE c (id bigint PRIMARY KEY, p bigint);"
     "SELECT pgfleet.distribute_table('p', 'id', 4)", "add co-located c_p p",
     "foreign key c_p of {s}.c does not pair its distribution key id with the distribution key id of {s}.p"),
], ids=["plain_target", "not_colocated", "not_on_the_key"])
def test_what_cannot_be_enforced_is_refused(fleet: Fleet, schema: str, setup: str, call: str, message: str) -> None:
    conn = fleet.conn()
    conn.execute(setup.encode())
    expected = message.format(s=schema)
    if call == "distribute c":
        with pytest.raises(SpecError, match="whose rows are only on the coordinator") as err:
            fleet.distribute(DistributeSpec(QualifiedName(schema, "c"), "id", HashSpec(4)))
        assert err.value.message == expected and "pgfleet reference" in str(err.value.hint)
        with pytest.raises(psycopg.Error) as sql_err:  # the SQL API: the same words
            conn.execute("SELECT pgfleet.distribute_table('c', 'id', 4)")
        assert sql_err.value.diag.message_primary == expected
        assert conn.execute("SELECT count(*) FROM pgfleet.tables WHERE relid = 'c'::regclass").fetchone() == (0,)
        return
    if call == "add co-located c_p p":
        conn.execute("SELECT pgfleet.distribute_table('c', 'id', colocate_with => 'p')")
    else:
        conn.execute("SELECT pgfleet.distribute_table('c', 'id', 4)")
    with pytest.raises(psycopg.Error) as refused:
        conn.execute("SELECT pgfleet.add_foreign_key('c', 'c_p', ARRAY['p'], 'p', ARRAY['id'])")
    assert refused.value.diag.message_primary == expected
    assert refused.value.diag.message_hint
    assert conn.execute("SELECT count(*) FROM pgfleet.foreign_keys WHERE relid = 'c'::regclass").fetchone() == (0,)


@pytest.mark.parametrize("drop", ["DROP TABLE countries, orders, items", "DROP SCHEMA {s} CASCADE"])
def test_tables_joined_by_keys_are_dropped_together(fleet: Fleet, schema: str, drop: str) -> None:
    """One statement drops a reference table and the distributed tables whose keys point at it (DROP SCHEMA
    … CASCADE, as a test or `migrate … zero` does): the workers drop the referencing shards first."""
    conn = fleet.conn()
    conn.execute("CREATE TABLE countries (code text PRIMARY KEY)")
    conn.execute("INSERT INTO countries VALUES ('FR')")
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, country text REFERENCES countries)")
    conn.execute("CREATE TABLE items (order_id bigint, n int, PRIMARY KEY (order_id, n))")
    conn.execute("SELECT pgfleet.reference_table('countries')")
    conn.execute("SELECT pgfleet.distribute_table('orders', 'id', 4)")
    conn.execute("SELECT pgfleet.distribute_table('items', 'order_id', colocate_with => 'orders')")
    conn.execute("SELECT pgfleet.add_foreign_key('items', 'items_order_fk', ARRAY['order_id'], 'orders', ARRAY['id'])")
    conn.execute("INSERT INTO orders VALUES (1, 'FR')")
    conn.execute("INSERT INTO items VALUES (1, 1)")
    shards = conn.execute("SELECT n.name, s.shard_schema, s.shard_table FROM pgfleet.shards s "
                          "JOIN pgfleet.nodes n ON n.name = s.node WHERE s.shard_schema = %s", [schema]).fetchall()
    assert len(shards) == 2 + 4 + 4
    conn.execute(drop.format(s=schema).encode())
    topo = fleet.topology()
    for node_name, shard_schema, shard_table in shards:
        node = topo.node(node_name)
        assert node is not None
        with fleet.worker_conn(node) as w:
            assert w.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))",
                             [shard_schema, shard_table]).fetchone() == (None,)
    assert conn.execute("SELECT count(*) FROM pgfleet.foreign_keys WHERE name = 'items_order_fk'").fetchone() == (0,)


def test_a_key_between_tables_of_one_migration(fleet: Fleet, schema: str) -> None:
    """Django and SQLAlchemy create both tables with the key between them, then a migration distributes them:
    the referenced table first, the referencing one co-located in the same transaction, and the key is on
    the shards. Distributing only the referenced one fails at COMMIT with what to do, and changes nothing."""
    conn = fleet.conn()
    ddl = ("CREATE TABLE {p} (id bigint PRIMARY KEY, name text);"
           "CREATE TABLE {c} (customer_id bigint NOT NULL REFERENCES {p} ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,"
           " n int, PRIMARY KEY (customer_id, n));"
           "INSERT INTO {p} SELECT g, 'c' || g FROM generate_series(1, 20) g;"
           "INSERT INTO {c} SELECT g % 20 + 1, g FROM generate_series(1, 60) g")
    conn.execute(ddl.format(p="customers", c="orders").encode())
    # only the referenced table: refused at COMMIT, nothing changed
    with pytest.raises(psycopg.Error) as err, conn.transaction():
        conn.execute(b"SELECT pgfleet.distribute_table('customers', 'id', 4)")
    assert err.value.sqlstate == "55000"
    assert err.value.diag.message_primary == (
        f"foreign key orders_customer_id_fkey of {schema}.orders references {schema}.customers, which this "
        f"transaction distributed, but {schema}.orders was not distributed with it")
    assert "colocate_with" in str(err.value.diag.message_hint)
    assert conn.execute(b"SELECT count(*) FROM pgfleet.tables WHERE relid IN ('customers'::regclass, 'orders'::regclass)"
                        b"").fetchone() == (0,)
    assert conn.execute(b"SELECT count(*) FROM pg_constraint WHERE conname = 'orders_customer_id_fkey'").fetchone() == (1,)
    with conn.transaction():  # both, in one transaction
        conn.execute(b"SELECT pgfleet.distribute_table('customers', 'id', 4)")
        conn.execute(b"SELECT pgfleet.distribute_table('orders', 'customer_id', colocate_with => 'customers')")
    keys = conn.execute(b"SELECT name, ref_relid::regclass::text, on_delete, deferral FROM pgfleet.foreign_keys "
                        b"WHERE relid = 'orders'::regclass").fetchall()
    assert keys == [("orders_customer_id_fkey", "customers", "CASCADE", "DEFERRABLE INITIALLY DEFERRED")]
    assert conn.execute(b"SELECT count(*) FROM pgfleet.parked_foreign_keys").fetchone() == (0,)
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_customer_id_fkey"):
        conn.execute(b"INSERT INTO orders VALUES (999, 1)")
    conn.execute(b"DELETE FROM customers WHERE id = 1")  # ON DELETE CASCADE, on the shards
    assert conn.execute(b"SELECT count(*) FROM orders WHERE customer_id = 1").fetchone() == (0,)
    assert conn.execute(b"SELECT count(*) FROM orders").fetchone() == (57,)
