"""Columns of the coordinator's own types (enums, domains, composite types, extensions' types) distribute:
the types go to the workers with the shards, and ALTER TYPE / ALTER DOMAIN follow (sql/types.sql).

Differential: the same table twice, ``plain`` stays on the coordinator, ``dist`` is distributed or made a
reference table; the same statements against both must give the same rows and the same errors.
"""

from __future__ import annotations

import psycopg
import pytest

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import PgfleetError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

Conn = psycopg.Connection[tuple[object, ...]]

TYPES = ("CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
         "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
         "CREATE TYPE pair AS (a int, b text)")
COLUMNS = "id int PRIMARY KEY, m mood, ms mood[], p posint, c pair"


def _try(conn: Conn, stmt: str) -> object:
    """The rows a statement returns (in its order if it has one), or the SQLSTATE it fails with (in a
    savepoint)."""
    try:
        with conn.transaction():
            cur = conn.execute(stmt.encode())
            if not cur.description:
                return cur.rowcount
            rows = cur.fetchall()
            return rows if "ORDER BY" in stmt else sorted(rows, key=repr)
    except psycopg.Error as exc:
        return exc.sqlstate


def _same(conn: Conn, statements: list[str]) -> None:
    for stmt in statements:
        assert _try(conn, stmt.replace("{t}", "dist")) == _try(conn, stmt.replace("{t}", "plain")), stmt


def _plain_and_dist(fleet: Fleet, schema: str, how: str, columns: str, rows: str, shards: int) -> None:
    """Tables ``plain`` and ``dist`` with ``columns`` and the same ``rows`` (VALUES or a query); ``dist``
    then hash-distributed over ``shards`` or made a reference table (``how``)."""
    conn = fleet.conn()
    for t in ("plain", "dist"):
        conn.execute(f"CREATE TABLE {t} ({columns})".encode())
        conn.execute(f"INSERT INTO {t} {rows}".encode())
    name = QualifiedName(schema, "dist")
    if how == "hash":
        fleet.distribute(DistributeSpec(name, "id", HashSpec(shards)))
    else:
        fleet.reference(ReferenceSpec(name))


def _on_workers(fleet: Fleet, query: str, params: tuple[object, ...] = ()) -> list[object]:
    """``query``'s first value on each worker."""
    topo = fleet.topology()
    found = []
    for node in topo.workers:
        with fleet.worker_conn(node) as w:
            row = w.execute(query.encode(), params).fetchone()
            found.append(row[0] if row else None)
    return found


@pytest.mark.parametrize("how", ["hash", "reference"])
def test_enum_domain_and_composite_columns_distribute_and_follow_alter(
        fleet: Fleet, cluster: LocalCluster, schema: str, how: str) -> None:
    conn = fleet.conn()
    for stmt in TYPES:
        conn.execute(stmt.encode())
    _plain_and_dist(fleet, schema, how, COLUMNS, "SELECT g, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood, "
                    "ARRAY['ok', 'sad']::mood[], g, ROW(g, 'x' || g)::pair FROM generate_series(1, 30) g", 4)
    assert _on_workers(fleet, "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum "
                              "WHERE enumtypid = to_regtype(%s)", (f"{schema}.mood",)) == [["sad", "ok", "happy"]] * 2
    rows = "SELECT id, m, ms, p, c FROM {t} ORDER BY m, id"
    _same(conn, [
        rows,
        "SELECT m, count(*) FROM {t} GROUP BY m ORDER BY m",
        "SELECT id FROM {t} WHERE m > 'sad' AND (c).a < 10 ORDER BY id",
        "INSERT INTO {t} VALUES (100, 'happy', '{sad}', 7, ROW(1, 'y')) RETURNING m, c",
        "INSERT INTO {t} VALUES (101, 'angry', NULL, 1, NULL)",  # not a value of the enum: 22P02
        "INSERT INTO {t} VALUES (102, 'ok', NULL, -1, NULL)",  # the domain's CHECK: 23514
        "UPDATE {t} SET m = 'ok', p = p + 1 WHERE id % 7 = 0 RETURNING id, m, p",
    ])
    # a value added, one renamed: the workers' enum follows, and so does the order of rows
    conn.execute(b"ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'")
    conn.execute(b"ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'")
    assert _on_workers(fleet, "SELECT array_agg(enumlabel::text ORDER BY enumsortorder) FROM pg_enum "
                              "WHERE enumtypid = to_regtype(%s)", (f"{schema}.mood",)) == \
        [["blue", "meh", "ok", "happy"]] * 2
    _same(conn, [
        "INSERT INTO {t} VALUES (103, 'meh', '{meh,blue}', 3, NULL) RETURNING m, ms",
        rows,
        "SELECT id FROM {t} WHERE m < 'ok' ORDER BY id",
    ])
    # a domain constraint added: the workers check it too
    conn.execute(b"ALTER DOMAIN posint ADD CONSTRAINT small CHECK (VALUE < 1000)")
    assert _on_workers(fleet, "SELECT count(*) FROM pg_constraint WHERE contypid = to_regtype(%s)",
                       (f"{schema}.posint",)) == [2, 2]
    _same(conn, ["INSERT INTO {t} VALUES (104, 'ok', NULL, 5000, NULL)"])
    # a column of a type made after the distribution
    conn.execute(b"CREATE TYPE size AS ENUM ('s', 'm', 'l')")
    for t in ("plain", "dist"):
        conn.execute(f"ALTER TABLE {t} ADD COLUMN sz size DEFAULT 'm'".encode())
    _same(conn, ["UPDATE {t} SET sz = 'l' WHERE id < 5", "SELECT id, sz FROM {t} ORDER BY sz, id"])
    # through the router: statements routed to one shard with the types' literals
    with routing_router(cluster) as router, psycopg.connect(
            host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
            password=cluster.spec.coordinator.password, autocommit=True) as rconn:
        rconn.execute(f'SET search_path = "{schema}"'.encode())
        _same(rconn, [
            "INSERT INTO {t} VALUES (200, 'meh', '{ok}', 9, ROW(2, 'z'), 's') RETURNING m, ms, c, sz",
            "SELECT m, p, c FROM {t} WHERE id = 200",
            "UPDATE {t} SET m = 'happy' WHERE id = 200 RETURNING m",
            "INSERT INTO {t} VALUES (201, 'nope', NULL, 1, NULL)",
        ])
    _same(conn, [rows])


def test_the_sql_api_carries_types(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE TYPE status AS ENUM ('new', 'paid', 'sent')")
    conn.execute(b"CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%')")
    for t in ("plain", "dist", "ref"):
        conn.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, s status NOT NULL DEFAULT 'new', e email)".encode())
        conn.execute(f"INSERT INTO {t} (id, e) SELECT g, 'u' || g || '@x' FROM generate_series(1, 10) g".encode())
    with conn.transaction():
        conn.execute(b"SELECT pgfleet.distribute_table('dist', 'id', 4)")
        conn.execute(b"SELECT pgfleet.reference_table('ref')")
    statements = [
        "INSERT INTO {t} (id, s, e) VALUES (11, 'paid', 'a@b') RETURNING s",
        "INSERT INTO {t} (id, e) VALUES (12, 'no at sign')",
        "UPDATE {t} SET s = 'sent' WHERE id > 8 RETURNING id, s",
        "SELECT s, count(*) FROM {t} GROUP BY s ORDER BY s",
        "SELECT id, s, e FROM {t} ORDER BY id",
    ]
    expected = [_try(conn, stmt.replace("{t}", "plain")) for stmt in statements]
    for t in ("dist", "ref"):
        assert [_try(conn, stmt.replace("{t}", t)) for stmt in statements] == expected, t


def test_an_extension_type_brings_its_extension(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE EXTENSION IF NOT EXISTS citext WITH SCHEMA public")
    for t in ("plain", "dist"):
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, name public.citext)".encode())
        conn.execute(f"INSERT INTO {t} VALUES (1, 'Alice'), (2, 'BOB'), (3, 'carol')".encode())
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(2)))
    assert _on_workers(fleet, "SELECT extname FROM pg_extension WHERE extname = 'citext'") == ["citext", "citext"]
    _same(fleet.conn(), [
        "SELECT id FROM {t} WHERE name = 'ALICE' ORDER BY id",
        "SELECT name FROM {t} ORDER BY name",
        "INSERT INTO {t} VALUES (4, 'Dave') RETURNING name = 'dave'",
    ])


def test_an_enum_that_differs_on_a_worker_is_named_and_nothing_is_applied(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE TYPE colour AS ENUM ('red', 'green')")
    conn.execute(b"CREATE TABLE t (id int PRIMARY KEY, c colour)")
    conn.execute(b"INSERT INTO t VALUES (1, 'red'), (2, 'green')")
    worker = fleet.topology().workers[1]
    with fleet.worker_conn(worker) as w:  # the worker's own type of that name, in use there
        w.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
        w.execute(f'CREATE TYPE "{schema}".colour AS ENUM (\'cyan\', \'magenta\')'.encode())
        w.execute(f'CREATE TABLE "{schema}".mine (c "{schema}".colour)'.encode())
    with pytest.raises(PgfleetError) as info:
        fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    message = str(info.value)
    assert f"{schema}.colour has the values {{cyan,magenta}} on this worker but {{red,green}} on the coordinator" \
        in message, message
    assert worker.name in message, message
    assert conn.execute(b"SELECT count(*) FROM pgfleet.tables WHERE relid = 't'::regclass").fetchone() == (0,)
    assert conn.execute(b"SELECT c FROM t ORDER BY id").fetchall() == [("red",), ("green",)]
    assert _on_workers(fleet, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 't\\_%%'",
                       (schema,)) == [0, 0]


def test_renames_schema_moves_and_drops_of_types_reach_the_workers(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    other = f"{schema}_x"[:63]
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{other}"'.encode())
    try:
        conn.execute(b"CREATE TYPE mood AS ENUM ('sad', 'ok')")
        conn.execute(b"CREATE DOMAIN posint AS int CHECK (VALUE > 0)")
        conn.execute(b"CREATE TYPE spare AS ENUM ('a')")
        for t in ("plain", "dist"):
            conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, m mood, p posint, s spare)".encode())
            conn.execute(f"INSERT INTO {t} VALUES (1, 'sad', 1, 'a'), (2, 'ok', 2, NULL)".encode())
        fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(2)))
        conn.execute(b"ALTER TYPE mood RENAME TO feeling")
        conn.execute(f'ALTER TYPE feeling SET SCHEMA "{other}"'.encode())
        conn.execute(b"ALTER DOMAIN posint RENAME TO positive")
        found = "SELECT to_regtype(%s) IS NOT NULL"
        assert _on_workers(fleet, found, (f'"{other}".feeling',)) == [True, True]
        assert _on_workers(fleet, found, (f'"{schema}".mood',)) == [False, False]
        assert _on_workers(fleet, found, (f'"{schema}".positive',)) == [True, True]
        # the renamed enum still follows ALTER TYPE under its new name
        conn.execute(f'ALTER TYPE "{other}".feeling ADD VALUE \'glad\''.encode())
        _same(conn, ["INSERT INTO {t} VALUES (3, 'glad', 3, NULL) RETURNING m",
                     "SELECT id, m, p, s FROM {t} ORDER BY m, id"])
        # dropped with its column on the coordinator: on the workers it goes once nothing there uses it
        conn.execute(b"CREATE TYPE unused AS ENUM ('u')")
        conn.execute(b"CREATE TABLE tmp (id int PRIMARY KEY, u unused)")
        fleet.distribute(DistributeSpec(QualifiedName(schema, "tmp"), "id", HashSpec(2)))
        assert _on_workers(fleet, found, (f'"{schema}".unused',)) == [True, True]
        conn.execute(b"DROP TABLE tmp")
        conn.execute(b"DROP TYPE unused")
        assert _on_workers(fleet, found, (f'"{schema}".unused',)) == [False, False]
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{other}" CASCADE'.encode())


@pytest.mark.parametrize("how", ["hash", "reference"])
def test_drop_type_cascade_drops_the_column_on_the_shards(fleet: Fleet, cluster: LocalCluster, schema: str,
                                                         how: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE TYPE gone AS ENUM ('x', 'y')")
    _plain_and_dist(fleet, schema, how, "id int PRIMARY KEY, g gone, note text", "VALUES (1, 'x', 'a'), (2, 'y', 'b')", 2)
    conn.execute(b"DROP TYPE gone CASCADE")  # drops the column g of both tables
    _same(conn, ["SELECT * FROM {t} ORDER BY id", "INSERT INTO {t} VALUES (3, 'c') RETURNING *"])
    shard_columns = "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND column_name = 'g'"
    assert _on_workers(fleet, shard_columns, (schema,)) == [0, 0]
    with routing_router(cluster) as router, psycopg.connect(
            host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
            password=cluster.spec.coordinator.password, autocommit=True) as rconn:
        rconn.execute(f'SET search_path = "{schema}"'.encode())
        _same(rconn, ["SELECT * FROM {t} WHERE id = 1", "SELECT * FROM {t} ORDER BY id"])


def test_range_types_and_their_multiranges_distribute(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE TYPE floatrange AS RANGE (SUBTYPE = float8, SUBTYPE_DIFF = float8mi)")
    conn.execute(b"CREATE TYPE textrange AS RANGE (SUBTYPE = text, COLLATION = \"C\")")
    for t in ("plain", "dist"):
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, r floatrange, m floatmultirange, s textrange)".encode())
        conn.execute(f"INSERT INTO {t} SELECT g, floatrange(g, g + 1.5), floatmultirange(floatrange(g, g + 1)), "
                     f"textrange('a' || g, 'b' || g) FROM generate_series(1, 20) g".encode())
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(2)))
    _same(conn, [
        "SELECT id, r, m, s FROM {t} ORDER BY r, id",
        "SELECT id FROM {t} WHERE r @> 3.2::float8 AND s @> 'a3z'::text ORDER BY id",
        "INSERT INTO {t} VALUES (50, '[1,0)', NULL, NULL)",  # lower bound above upper: 22000 on both
        "INSERT INTO {t} VALUES (51, '(2.5,4]', '{[1,2),[3,4)}', '[B,a)') RETURNING r, m, upper(s)",
    ])
    assert _on_workers(fleet, "SELECT to_regtype(%s) IS NOT NULL", (f"{schema}.floatmultirange",)) == [True, True]



@pytest.mark.parametrize("how", ["hash", "reference"])
def test_composite_attribute_changes_reach_the_workers(fleet: Fleet, cluster: LocalCluster, schema: str,
                                                       how: str) -> None:
    conn = fleet.conn()
    conn.execute(b"CREATE TYPE pair AS (a int, b text)")
    _plain_and_dist(fleet, schema, how, "id int PRIMARY KEY, c pair",
                    "SELECT g, ROW(g, 'x' || g)::pair FROM generate_series(1, 20) g", 4)
    attributes = ("SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum) "
                  "FROM pg_attribute WHERE attrelid = (SELECT typrelid FROM pg_type WHERE oid = to_regtype(%s)) "
                  "AND attnum > 0 AND NOT attisdropped")
    qualified = f'"{schema}".pair'

    def coordinator_attributes() -> object:
        row = conn.execute(attributes.encode(), (qualified,)).fetchone()
        return row[0] if row else None

    rows = "SELECT id, c FROM {t} ORDER BY id"
    conn.execute(b"ALTER TYPE pair ADD ATTRIBUTE n numeric(6, 2)")
    _same(conn, [rows, "INSERT INTO {t} VALUES (30, ROW(3, 'y', 2.5)) RETURNING c, (c).n",
                 "SELECT id FROM {t} WHERE (c).n > 1 ORDER BY id"])
    # a rename keeps the values (a drop and an add would lose them); two names swapped
    conn.execute(b"ALTER TYPE pair RENAME ATTRIBUTE b TO label")
    conn.execute(b"BEGIN")
    conn.execute(b"ALTER TYPE pair RENAME ATTRIBUTE a TO tmp")
    conn.execute(b"ALTER TYPE pair RENAME ATTRIBUTE n TO a")
    conn.execute(b"ALTER TYPE pair RENAME ATTRIBUTE tmp TO n")
    conn.execute(b"COMMIT")
    _same(conn, [rows, "SELECT (c).label, (c).n, (c).a FROM {t} WHERE id IN (3, 30) ORDER BY id"])
    # dropped, then one added in its place with the same name and another type
    conn.execute(b"ALTER TYPE pair DROP ATTRIBUTE a")
    conn.execute(b"ALTER TYPE pair ADD ATTRIBUTE a boolean, ADD ATTRIBUTE d date")
    _same(conn, [rows, "UPDATE {t} SET c.a = true, c.d = '2026-01-02' WHERE id < 4 RETURNING id, c",
                 "SELECT id, (c).label FROM {t} WHERE (c).a ORDER BY id"])
    want = coordinator_attributes()
    assert want == ["n integer", "label text", "a boolean", "d date"]
    assert _on_workers(fleet, attributes, (qualified,)) == [want, want]
    # through the router too: routed to one shard, the composite's text is the same
    with routing_router(cluster) as router, psycopg.connect(
            host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
            password=cluster.spec.coordinator.password, autocommit=True) as rconn:
        rconn.execute(f'SET search_path = "{schema}"'.encode())
        _same(rconn, ["INSERT INTO {t} VALUES (40, ROW(4, 'z', false, '2026-03-04')) RETURNING c",
                      "SELECT c, (c).d FROM {t} WHERE id = 2"])


def test_a_workers_own_composite_with_other_attributes_is_replaced_or_named(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    topo = fleet.topology()
    for node in topo.workers:  # the workers have their own "pair" already, with other attributes
        with fleet.worker_conn(node) as w:
            w.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'.encode())
            w.execute(f'CREATE TYPE "{schema}".pair AS (x text)'.encode())
    conn.execute(b"CREATE TYPE pair AS (a int, b text)")
    conn.execute(b"CREATE TABLE dist (id int PRIMARY KEY, c pair)")
    conn.execute(b"INSERT INTO dist VALUES (1, ROW(1, 'x'))")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(2)))  # unused there: replaced
    assert _on_workers(fleet, "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute WHERE attrelid = "
                              "(SELECT typrelid FROM pg_type WHERE oid = to_regtype(%s)) AND attnum > 0",
                       (f'"{schema}".pair',)) == [["a", "b"]] * 2
    assert conn.execute(b"SELECT (c).b FROM dist").fetchall() == [("x",)]
    # used by a table of the worker's own: not replaced, the distribution stops and names the type
    for node in topo.workers:
        with fleet.worker_conn(node) as w:
            w.execute(f'CREATE TYPE "{schema}".triple AS (x text)'.encode())
            w.execute(f'CREATE TABLE "{schema}".own (t "{schema}".triple)'.encode())
    conn.execute(b"CREATE TYPE triple AS (a int, b int, c int)")
    conn.execute(b"CREATE TABLE other (id int PRIMARY KEY, t triple)")
    with pytest.raises(PgfleetError, match=r"composite type .*triple has other attributes on this worker"):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "other"), "id", HashSpec(2)))
    assert conn.execute(b"SELECT count(*) FROM pgfleet.tables WHERE table_name = 'other'").fetchone() == (0,)
