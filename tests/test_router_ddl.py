"""Plain ``ALTER TABLE … ADD FOREIGN KEY`` on a distributed table through the router (what ORMs and
migration tools send) declares a foreign key enforced shard by shard, with the SQL API's checks."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.ddl import ReplyRewriter, Run, Say, translate
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from test_router_analyze import TOPOLOGY


def planned(statement: str) -> str | None:
    found = translate(statement, TOPOLOGY, ("public",))
    return found.sql if found is not None else None


def test_only_plain_foreign_keys_of_distributed_tables_are_translated() -> None:
    assert planned("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (country) REFERENCES countries ON DELETE CASCADE") == (
        "SELECT pgfleet.add_foreign_key('\"orders\"'::regclass, 'fk', '{country}'::text[], '\"countries\"'::regclass, "
        "NULL::text[], 'CASCADE', 'NO ACTION', 'NOT DEFERRABLE')")
    assert planned('ALTER TABLE public.orders ADD FOREIGN KEY (a, "B") REFERENCES x.y (c, d)') == (
        "SELECT pgfleet.add_foreign_key('\"public\".\"orders\"'::regclass, NULL, '{a,B}'::text[], '\"x\".\"y\"'::regclass, "
        "'{c,d}'::text[], 'NO ACTION', 'NO ACTION', 'NOT DEFERRABLE')")
    assert str(planned("ALTER TABLE orders ADD FOREIGN KEY (a) REFERENCES z (b) DEFERRABLE INITIALLY DEFERRED")).endswith(
        "'DEFERRABLE INITIALLY DEFERRED')")
    assert str(planned("ALTER TABLE orders ADD FOREIGN KEY (a) REFERENCES z (b) DEFERRABLE")).endswith(
        "'DEFERRABLE INITIALLY IMMEDIATE')")
    for other in ("ALTER TABLE countries ADD FOREIGN KEY (a) REFERENCES z",  # a reference table: the coordinator's
                  "ALTER TABLE plain ADD FOREIGN KEY (a) REFERENCES z",
                  "ALTER TABLE ONLY orders ADD FOREIGN KEY (a) REFERENCES z",
                  "ALTER TABLE orders ADD FOREIGN KEY (a) REFERENCES z NOT VALID",
                  "ALTER TABLE orders ADD FOREIGN KEY (a) REFERENCES z MATCH FULL",
                  "ALTER TABLE orders ADD CHECK (id > 0)", "SELECT 'references'", "not sql references"):
        assert planned(other) is None, other


def test_djangos_add_field_becomes_the_column_then_the_key() -> None:
    """Django's AddField of a ForeignKey: the column, then the key; SET CONSTRAINTS of it is not sent."""
    found = translate('ALTER TABLE "orders" ADD COLUMN "c_id" bigint NULL CONSTRAINT "o_c_fk" REFERENCES "countries"("code") '
                      'DEFERRABLE INITIALLY DEFERRED; SET CONSTRAINTS "o_c_fk" IMMEDIATE', TOPOLOGY, ("public",))
    assert found is not None
    assert found.sql == ("ALTER TABLE orders ADD COLUMN c_id bigint NULL;\n"
                         "SELECT pgfleet.add_foreign_key('\"orders\"'::regclass, 'o_c_fk', '{c_id}'::text[], "
                         "'\"countries\"'::regclass, '{code}'::text[], 'NO ACTION', 'NO ACTION', 'DEFERRABLE INITIALLY DEFERRED')")
    assert found.steps == (Run(None), Run(""), Say("SET CONSTRAINTS"))
    # the coordinator's reply to the two statements becomes the reply to the client's two
    reply = (p.CommandComplete("ALTER TABLE").encode() + p.NoticeResponse((("S", "NOTICE"), ("M", "n"))).encode()
             + b"T\x00\x00\x00\x06\x00\x00" + b"D\x00\x00\x00\x06\x00\x00" + p.CommandComplete("SELECT 1").encode()
             + p.ReadyForQuery("T").encode())
    rewriter = ReplyRewriter(found.steps)
    out = rewriter.feed(reply[:9]) + rewriter.feed(reply[9:])
    assert [t for t, _ in wire.Framer().feed(out)] == [b"C", b"N", b"C", b"Z"] and rewriter.done
    assert b"SET CONSTRAINTS" in out and b"SELECT 1" not in out
    failed = ReplyRewriter(found.steps)  # the column failed: the error and ReadyForQuery only
    out = failed.feed(p.error_response("42701", "exists", severity="ERROR").encode() + p.ReadyForQuery("E").encode())
    assert [t for t, _ in wire.Framer().feed(out)] == [b"E", b"Z"]


@pytest.fixture
def router(cluster: LocalCluster, fleet: Fleet, schema: str) -> Iterator[RouterServer]:
    conn = fleet.conn()
    conn.execute("CREATE TABLE countries (code text PRIMARY KEY)")
    conn.execute("INSERT INTO countries VALUES ('FR'), ('NG')")
    conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY)")
    conn.execute("CREATE TABLE items (order_id bigint, n int, country text, PRIMARY KEY (order_id, n))")
    conn.execute("CREATE TABLE plain (id bigint PRIMARY KEY)")
    conn.execute("INSERT INTO orders SELECT generate_series(1, 20)")
    orders = QualifiedName(schema, "orders")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "countries")))
    fleet.distribute(DistributeSpec(orders, "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "items"), "order_id", colocate_with=orders))
    with routing_router(cluster) as server:
        yield server


def test_alter_table_add_foreign_key_through_the_router(cluster: LocalCluster, fleet: Fleet, schema: str,
                                                         router: RouterServer) -> None:
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                         options=f"-c search_path={schema}", autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)  # simple protocol, as psql and migration tools
        cur.execute("ALTER TABLE items ADD FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE")
        assert cur.statusmessage == "ALTER TABLE"
        cur.execute("ALTER TABLE items ADD CONSTRAINT item_country FOREIGN KEY (country) REFERENCES countries "
                    "DEFERRABLE INITIALLY DEFERRED")  # as Django declares its keys
        cur.execute("INSERT INTO items VALUES (3, 1, 'FR'), (4, 1, NULL)")
        with conn.transaction():  # deferred: checked at COMMIT, on the worker
            cur.execute("INSERT INTO items VALUES (6, 1, 'XX')")
            cur.execute("UPDATE items SET country = 'NG' WHERE order_id = 6")
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="items_order_id_fkey"):
            cur.execute("INSERT INTO items VALUES (99, 1, 'FR')")
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="item_country"):
            cur.execute("INSERT INTO items VALUES (5, 1, 'XX')")  # autocommit: at once
        cur.execute("DELETE FROM orders WHERE id = 3")  # cascades on the shard
        cur.execute("SELECT count(*) FROM items WHERE order_id = 3")
        assert cur.fetchall() == [(0,)]
        with pytest.raises(psycopg.errors.DuplicateObject, match="item_country"):
            cur.execute("ALTER TABLE items ADD CONSTRAINT item_country FOREIGN KEY (country) REFERENCES countries")
        assert router.context.stats.pinned_sessions == 0  # adding foreign keys keeps the session routable
        with conn.transaction():  # in a transaction (migrations run in one), with other DDL (which pins it)
            cur.execute("ALTER TABLE items ADD COLUMN alt text")
            cur.execute("ALTER TABLE items ADD COLUMN alt_country text REFERENCES countries (code)")
            assert cur.statusmessage == "ALTER TABLE"
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="items_alt_country_fkey"):
            cur.execute("INSERT INTO items VALUES (7, 1, 'FR', 'a', 'XX')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="whose rows are only on the coordinator") as info:
            cur.execute("ALTER TABLE items ADD FOREIGN KEY (n) REFERENCES plain")
        assert "make" in (info.value.diag.message_hint or "")
        cur.execute("ALTER TABLE items ADD CONSTRAINT positive CHECK (n > 0)")  # the coordinator's own
        cur.execute("ALTER TABLE items DROP CONSTRAINT positive")  # dropped as it is
        cur.execute("ALTER TABLE items DROP CONSTRAINT IF EXISTS items_order_id_fkey1")  # PostgreSQL's notice
        with pytest.raises(psycopg.errors.UndefinedObject, match="missing"):
            cur.execute("ALTER TABLE items DROP CONSTRAINT missing")
        cur.execute("ALTER TABLE items DROP CONSTRAINT item_country")  # a key only the shards hold
        assert cur.statusmessage == "ALTER TABLE"
        cur.execute("INSERT INTO items VALUES (8, 1, 'XX')")
    assert fleet.conn().execute("SELECT name, on_delete FROM pgfleet.foreign_keys WHERE relid = 'items'::regclass "
                                "ORDER BY name").fetchall() == [("items_alt_country_fkey", "NO ACTION"),
                                                                 ("items_order_id_fkey", "CASCADE")]



def test_the_rewrite_follows_set_search_path(cluster: LocalCluster, fleet: Fleet, schema: str,
                                             router: RouterServer) -> None:
    """A migration tool that sets search_path after connecting: the names of its ALTER TABLE resolve in the
    schema it set (PostgreSQL 18 reports the change), not in the one of the connection string."""
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                         options="-c search_path=public", autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute(f'SET search_path = "{schema}", public')
        cur.execute("ALTER TABLE items ADD FOREIGN KEY (order_id) REFERENCES orders (id)")
        assert cur.statusmessage == "ALTER TABLE"
        with pytest.raises(psycopg.errors.ForeignKeyViolation, match="items_order_id_fkey"):
            cur.execute("INSERT INTO items VALUES (999, 1, NULL)")
        cur.execute("RESET search_path")  # back to public: items is not found there, as on one server
        with pytest.raises(psycopg.errors.UndefinedTable):
            cur.execute("ALTER TABLE items ADD FOREIGN KEY (order_id) REFERENCES orders (id)")


def test_unique_constraints_of_distributed_tables_are_translated() -> None:
    assert planned("ALTER TABLE orders ADD CONSTRAINT per_customer UNIQUE (customer, id)") == (
        "SELECT pgfleet.add_unique_constraint('\"orders\"'::regclass, 'per_customer', '{customer,id}'::text[], false, "
        "'NOT DEFERRABLE', false)")
    assert planned('ALTER TABLE orders ADD PRIMARY KEY ("id") DEFERRABLE') == (
        "SELECT pgfleet.add_unique_constraint('\"orders\"'::regclass, NULL, '{id}'::text[], true, "
        "'DEFERRABLE INITIALLY IMMEDIATE', false)")
    assert str(planned("ALTER TABLE orders ADD UNIQUE NULLS NOT DISTINCT (id, note)")).endswith("false, 'NOT DEFERRABLE', true)")
    for other in ("ALTER TABLE orders ADD UNIQUE (id) INCLUDE (note)",  # what the shards' constraint would not carry
                  "ALTER TABLE orders ADD UNIQUE USING INDEX orders_idx",
                  "ALTER TABLE orders ADD UNIQUE (id) WITH (fillfactor = 70)",
                  "ALTER TABLE countries ADD UNIQUE (code)",  # a reference table: the coordinator's
                  "ALTER TABLE orders ADD COLUMN u int UNIQUE"):  # PostgreSQL says what is missing
        assert planned(other) is None, other


def test_unique_constraints_after_distribution(cluster: LocalCluster, fleet: Fleet, schema: str,
                                               router: RouterServer) -> None:
    """A migration's unique constraint that includes the distribution column (a multi-tenant app's
    ``UNIQUE (tenant, email)``): enforced on every shard from COMMIT on, dropped by name, kept by undistribute."""
    conn = fleet.conn()
    conn.execute("CREATE TABLE accounts (tenant bigint NOT NULL, email text, name text)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "accounts"), "tenant", HashSpec(4)))
    router.context.routing.refresh()  # type: ignore[union-attr]  # else within its 2 s
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                         options=f"-c search_path={schema}", autocommit=True) as client:
        cur = psycopg.ClientCursor(client)  # simple protocol, as psql and migration tools
        cur.execute("INSERT INTO accounts VALUES (1, 'a@x', 'one'), (2, 'a@x', 'two'), (2, 'a@x', 'dup'), "
                    "(2, NULL, 'n1'), (2, NULL, 'n2')")
        conn.execute("CREATE TABLE plain_accounts AS SELECT * FROM accounts")
        for add in ("ADD CONSTRAINT accounts_tenant_email_uniq UNIQUE (tenant, email)",
                    "ADD CONSTRAINT nnd UNIQUE NULLS NOT DISTINCT (email, tenant)", "ADD PRIMARY KEY (tenant, email)"):
            # rows that break it: refused at the statement, in the words one server uses
            errors = []
            for table in ("accounts", "plain_accounts"):
                with pytest.raises(psycopg.Error) as info:
                    cur.execute(f"ALTER TABLE {table} {add}")
                errors.append((info.value.sqlstate, (info.value.diag.message_primary or "").replace("plain_", ""),
                               (info.value.diag.message_detail or "").replace("plain_", "")))  # CONTEXT differs
            assert errors[0] == errors[1], add
        cur.execute("DELETE FROM accounts WHERE name IN ('dup', 'n1', 'n2')")
        with client.transaction():  # Django runs a migration in one
            cur.execute('ALTER TABLE "accounts" ADD CONSTRAINT "accounts_tenant_email_uniq" UNIQUE ("tenant", "email")')
            assert cur.statusmessage == "ALTER TABLE"
        cur.execute("INSERT INTO accounts VALUES (3, 'a@x', 'three')")  # another tenant: allowed
        with pytest.raises(psycopg.errors.UniqueViolation, match="accounts_tenant_email_uniq"):
            cur.execute("INSERT INTO accounts VALUES (1, 'a@x', 'again')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="distribution column tenant") as info:
            cur.execute("ALTER TABLE accounts ADD CONSTRAINT by_email UNIQUE (email)")
        assert "add tenant" in (info.value.diag.message_hint or "")
        with pytest.raises(psycopg.errors.UndefinedColumn, match="nope"):
            cur.execute("ALTER TABLE accounts ADD UNIQUE (tenant, nope)")
        cur.execute("ALTER TABLE accounts ADD PRIMARY KEY (tenant, name)")
        with pytest.raises(psycopg.errors.DuplicateObject, match='constraint "accounts_pkey" for relation'):
            cur.execute("ALTER TABLE accounts ADD CONSTRAINT accounts_pkey UNIQUE (tenant, email)")  # a shard's name
        with pytest.raises(psycopg.errors.UniqueViolation, match="accounts_pkey"):
            cur.execute("INSERT INTO accounts VALUES (2, 'b@x', 'two')")
        assert router.context.stats.pinned_sessions == 0  # adding keys keeps the session routable
        cur.execute("ALTER TABLE accounts DROP CONSTRAINT accounts_tenant_email_uniq")  # only the shards hold it
        assert cur.statusmessage == "ALTER TABLE"
        cur.execute("INSERT INTO accounts VALUES (1, 'a@x', 'again')")
        cur.execute("ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_tenant_email_uniq")
    fleet.undistribute(QualifiedName(schema, "accounts"))
    assert conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'accounts'::regclass "
                        "AND contype = 'p'").fetchall() == [("PRIMARY KEY (tenant, name)",)]


def test_a_migration_right_after_distribute_table(cluster: LocalCluster, fleet: Fleet, schema: str,
                                                  router: RouterServer) -> None:
    """Django runs one migration after the other: the statement after ``distribute_table``'s commit already
    sees the table distributed (the session waits for a new routing snapshot), and after
    ``undistribute_table`` a plain table."""
    fleet.conn().execute("CREATE TABLE tickets (id bigint PRIMARY KEY, order_id bigint, code text)")
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                         options=f"-c search_path={schema}", autocommit=True) as client:
        cur = psycopg.ClientCursor(client)
        for _ in range(3):  # no 2 s refresh in between could make this pass by luck three times
            cur.execute("SELECT pgfleet.distribute_table('tickets', 'id', colocate_with => 'orders')")
            cur.execute("ALTER TABLE tickets ADD CONSTRAINT tickets_code UNIQUE (id, code)")
            cur.execute("ALTER TABLE tickets ADD FOREIGN KEY (id) REFERENCES orders (id)")
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="tickets_id_fkey"):
                cur.execute("INSERT INTO tickets VALUES (999, 1, 'x')")
            cur.execute("INSERT INTO tickets VALUES (7, 1, 'x')")
            cur.execute("SELECT pgfleet.undistribute_table('tickets')")
            cur.execute("INSERT INTO tickets VALUES (8, 1, 'y')")  # the plain table's now, on the coordinator
            cur.execute("SELECT id FROM tickets ORDER BY id")
            assert cur.fetchall() == [(7,), (8,)]
            # the plain table keeps the unique constraint (from a shard); a key to a distributed table cannot stay
            cur.execute("ALTER TABLE tickets DROP CONSTRAINT tickets_code")
            cur.execute("TRUNCATE tickets")
