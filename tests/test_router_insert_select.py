"""INSERT … SELECT into a distributed table from anything the router cannot pair shard by shard — another
co-location group, a key computed from the row, a reference or a local table, a join, an aggregate,
generate_series — in autocommit: the router gets the selected rows from the coordinator first (as the
client's role, in a read-only transaction) and sends them to their shards as a VALUES list
(router/rowsource.py). Compared with the same statements on plain tables: the same rows, ids and errors."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from conftest import connect, create_twins, login_role
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.rowsource import MAX_ROWS, row_source
from pgfleet.router.server import RouterServer
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from test_router_keyfill import outcome
from test_router_txn import routing_router

SETUP = [
    "CREATE TABLE {p}dst (id bigint PRIMARY KEY, note text, made timestamptz DEFAULT now())",
    "CREATE TABLE {p}src (k text PRIMARY KEY, id bigint, note text)",
    "CREATE TABLE {p}kind (id int PRIMARY KEY, name text)",
    "CREATE TABLE {p}extra (id int PRIMARY KEY, weight numeric)",
    "INSERT INTO {p}src SELECT 'k' || g, g, 'note ' || g FROM generate_series(1, 40) g",
    "INSERT INTO {p}kind VALUES (1, 'one'), (2, 'two'), (3, NULL)",
    "INSERT INTO {p}extra VALUES (1, 1.5), (2, 2.25)",
]

STATEMENTS = [
    "INSERT INTO {p}dst (id, note) SELECT id + 100, note FROM {p}src WHERE id <= 5 ORDER BY id RETURNING id, note",
    "INSERT INTO {p}dst (id, note) SELECT k.id, k.name || ':' || e.weight FROM {p}kind k JOIN {p}extra e USING (id) "
    "ORDER BY k.id DESC RETURNING id, note, made IS NOT NULL",
    "INSERT INTO {p}dst (id, note) SELECT g, 'g' || g FROM generate_series(1000, 1012) g",
    "INSERT INTO {p}dst (id, note) SELECT max(id) + 500, count(*)::text FROM {p}src",
    "INSERT INTO {p}dst (id, note) SELECT id * 10, upper(note) FROM {p}dst WHERE id < 200 ORDER BY id RETURNING *",
    "INSERT INTO {p}dst (id, note) SELECT id + 100, note FROM {p}src WHERE id = 1",  # 23505: 101 is there
    "INSERT INTO {p}dst (id, note) SELECT id, (1 / (id - 7))::text FROM {p}src WHERE id > 5",  # 22012
    "INSERT INTO {p}dst (id, note) SELECT id, note FROM {p}nowhere",  # 42P01
    "INSERT INTO {p}dst (id, note) SELECT id, note FROM {p}src WHERE false",
    "INSERT INTO {p}dst (id, note) SELECT id + 2000, note FROM {p}src WHERE id IN (SELECT id FROM {p}kind) ORDER BY 1 "
    "ON CONFLICT (id) DO UPDATE SET note = excluded.note || '!' RETURNING id, note",
    "INSERT INTO {p}dst (id, note) SELECT id + 2000, 'again' FROM {p}src WHERE id <= 2 ORDER BY 1 "
    "ON CONFLICT (id) DO UPDATE SET note = excluded.note || '!' RETURNING id, note",
    # a string constant is read by the column's type, as the INSERT of that SELECT does; a text value is not
    "INSERT INTO {p}dst (id, note, made) SELECT g + 3000, 'n', '2024-01-01 10:00+00' FROM generate_series(1, 3) g "
    "RETURNING id, made",
    "INSERT INTO {p}dst (id, note, made) SELECT g + 3100, 'n', '2024-01-01'::text FROM generate_series(1, 3) g",  # 42804
    "INSERT INTO {p}dst (id, note) SELECT k.id + 4000, e.weight::text FROM {p}kind k JOIN {p}extra e ON e.id = k.id "
    "ORDER BY 1 RETURNING id, note",  # a join's ON is not ON CONFLICT
    "SELECT id, note, made IS NOT NULL FROM {p}dst ORDER BY id",
]


@pytest.fixture
def router(cluster: LocalCluster, fleet: Fleet, schema: str) -> Iterator[RouterServer]:
    conn = fleet.conn()
    create_twins(conn, SETUP)
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dst"), "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "src"), "k", HashSpec(4)))  # another group
    fleet.reference(ReferenceSpec(QualifiedName(schema, "kind")))
    with routing_router(cluster) as server:  # extra stays a table of the coordinator's
        yield server


def test_the_same_rows_and_errors_as_plain_tables(cluster: LocalCluster, router: RouterServer, schema: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as conn:
        for statement in STATEMENTS:
            assert outcome(conn, statement.format(p="")) == outcome(conn, statement.format(p="plain_")), statement
    assert stats.rows_got_first >= 5 + 2 + 13 + 1 + 5 + 2 + 2 + 3 + 2
    assert stats.coordinator_transactions == 0


def test_bound_parameters(cluster: LocalCluster, router: RouterServer, schema: str) -> None:
    """psycopg's server-side parameters (the extended protocol), prepared from the third run on."""
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as conn:
        results = {}
        for prefix in ("", "plain_"):
            got = []
            for n in range(4):
                got += conn.execute(f"INSERT INTO {prefix}dst (id, note) SELECT id + %s, note || %s FROM {prefix}src "
                                    "WHERE id <= %s ORDER BY id RETURNING id, note", (300 + 10 * n, f"/{n}", n + 1)).fetchall()
            results[prefix] = got + conn.execute(f"SELECT id, note FROM {prefix}dst ORDER BY id").fetchall()
        assert results[""] == results["plain_"] and len(results[""]) == 2 * (1 + 2 + 3 + 4)
    assert stats.rows_got_first >= 1 + 2 + 3 + 4


def test_as_the_clients_role(cluster: LocalCluster, fleet: Fleet, router: RouterServer, schema: str) -> None:
    """The SELECT is the client's: a source it may not read is refused as on one server, and nothing is
    inserted; granted, the rows go to their shards."""
    conn = fleet.conn()
    with login_role(fleet, f"{schema}_etl"[:60]) as role:
        who = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), who))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON dst TO {}").format(who))
        router.context.routing.refresh()  # type: ignore[union-attr]
        with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=role,
                             password="pw", autocommit=True, options=f"-c search_path={schema}") as etl:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="src"):
                etl.execute("INSERT INTO dst (id, note) SELECT id, note FROM src WHERE id < 3")
            assert conn.execute("SELECT count(*) FROM dst").fetchone() == (0,)
            conn.execute(sql.SQL("GRANT SELECT ON src TO {}").format(who))
            got = router.context.stats.rows_got_first
            etl.execute("INSERT INTO dst (id, note) SELECT id, note FROM src WHERE id < 3")
            assert router.context.stats.rows_got_first == got + 2
    assert conn.execute("SELECT id, note FROM dst ORDER BY id").fetchall() == [(1, "note 1"), (2, "note 2")]


# --- pure ---------------------------------------------------------------------------------------------------------
TOPOLOGY = RoutingTopology(tables=(
    RoutedTable(oid=7, name=QualifiedName("public", "dst"), method="hash", key="id", colocation_id=1,
                columns=("id", "note"), key_type="bigint"),
    RoutedTable(oid=8, name=QualifiedName("public", "seq"), method="hash", key="id", colocation_id=1,
                columns=("id", "n"), key_type="bigint", drawn=("n",))))


@pytest.mark.parametrize(("statement", "reads"), [
    ("INSERT INTO dst (id, note) SELECT * FROM unnest($1::bigint[], $2::text[])", False),
    ("INSERT INTO dst (id, note) SELECT g, 'x' FROM generate_series(1, 3) g", False),
    ("INSERT INTO dst (id, note) SELECT id, note FROM src", True),
    ("INSERT INTO dst (id, note) SELECT 1, 'x' FROM (SELECT 1) AS s", False),  # reads no table
    ("INSERT INTO dst (id, note) SELECT row_number() OVER (), 'x' FROM unnest(ARRAY[1, 2])", True),
    ("INSERT INTO dst (id, note) SELECT count(*), 'x' FROM src RETURNING id", True),
    ("INSERT INTO dst (id, note) SELECT id, note FROM src FOR UPDATE", None),  # locks
    ("INSERT INTO dst (id, note) SELECT id, current_user FROM src", None),  # the pooled session's answer
    ("INSERT INTO dst (id, note) SELECT id, my_func(note) FROM src", None),  # may have side effects
    ("INSERT INTO dst (id, note) SELECT nextval('s'), 'x' FROM src", None),
    ("INSERT INTO dst SELECT id, note FROM src", None),  # no column list
    ("INSERT INTO kind (id, name) SELECT id, note FROM src", None),  # not a distributed table
    ("INSERT INTO seq (id) SELECT id FROM src", None),  # its other column's sequence: the coordinator's
])
def test_which_inserts_read_first(statement: str, reads: bool | None) -> None:
    source = row_source(statement, TOPOLOGY, ("public",))
    assert (None if source is None else source.reads) == reads


def test_too_many_rows_go_to_the_coordinator(cluster: LocalCluster, router: RouterServer, schema: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as conn:
        conn.execute(f"INSERT INTO dst (id, note) SELECT g, 'n' FROM generate_series(1, {MAX_ROWS + 1}) g")
        assert stats.rows_got_first == 0
        assert conn.execute("SELECT count(*) FROM dst").fetchone() == (MAX_ROWS + 1,)
