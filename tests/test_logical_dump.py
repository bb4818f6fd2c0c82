"""`pgfleet dump`: the whole logical database restored by pg_restore into a plain server answers queries
as the fleet does, with the keys, indexes, sequences and views of the original tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import pgfleet_cli
from plain_server import client, plain_server
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.logical_dump import parse_toc
from pgfleet.execute import connect
from pgfleet.spec import (
    DistributeSpec,
    HashSpec,
    ListShard,
    ListSpec,
    QualifiedName,
    RangeShard,
    RangeSpec,
    ReferenceSpec,
)

QUERIES = (
    "SELECT * FROM orders ORDER BY id",
    "SELECT count(*), count(note), sum(amount), min(placed), max(placed) FROM orders",
    "SELECT * FROM events ORDER BY id",
    "SELECT city, count(*), count(label) FROM sites GROUP BY city ORDER BY city",
    "SELECT * FROM sites ORDER BY city, id",
    "SELECT * FROM kinds ORDER BY id",
    "SELECT k.label, count(*) FROM orders o JOIN kinds k ON k.id = o.kind GROUP BY k.label ORDER BY 1 NULLS FIRST",
    "SELECT * FROM big_orders ORDER BY id",
    "SELECT * FROM notes ORDER BY id",
    "SELECT last_value FROM orders_id_seq",
)

# \d-level facts: constraints and indexes of the schema's tables, by table and name.
FACTS = """
SELECT c.relname, i.relname, x.indisprimary, x.indisunique, pg_get_indexdef(x.indexrelid)
FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()
ORDER BY 1, 2
"""


@pytest.fixture
def logical_db(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE kinds (id int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO kinds VALUES (1, 'small'), (2, 'large'), (3, NULL), (4, 'huge')")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "kinds")))
    conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, kind int, amount numeric(10,2), "
                 "placed timestamptz NOT NULL DEFAULT '2026-01-01', note text, code text, UNIQUE (code, id), "
                 "CHECK (amount >= 0))")
    conn.execute("CREATE INDEX orders_placed ON orders (placed DESC) WHERE note IS NOT NULL")
    conn.execute("INSERT INTO orders (kind, amount, placed, note, code) "
                 "SELECT 1 + g % 4, CASE WHEN g % 7 = 0 THEN NULL ELSE g * 1.25 END, "
                 "'2026-01-01'::timestamptz + g * interval '1 hour', CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END, "
                 "CASE WHEN g % 5 = 0 THEN NULL ELSE 'c' || g END FROM generate_series(1, 3000) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "orders"), "id", HashSpec(4)))
    conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, payload jsonb, at date)")
    conn.execute("INSERT INTO events SELECT g, CASE WHEN g % 2 = 0 THEN jsonb_build_object('g', g) END, "
                 "date '2026-01-01' + g FROM generate_series(1, 2000) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "events"), "id", RangeSpec((
        RangeShard(None, "1000", "w1"), RangeShard("1000", None, "w2")))))
    conn.execute("CREATE TABLE sites (city text NOT NULL, id int NOT NULL, label text, PRIMARY KEY (city, id))")
    conn.execute("INSERT INTO sites SELECT (ARRAY['paris', 'rome', 'lagos'])[1 + g % 3], g, "
                 "CASE WHEN g % 4 = 0 THEN NULL ELSE 'l' || g END FROM generate_series(1, 1500) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "sites"), "city", ListSpec((
        ListShard(("paris", "rome"), "w1"), ListShard(("lagos",), "w2")))))
    conn.execute("CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 3000")
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, order_id int, body text)")  # a plain coordinator table
    conn.execute("INSERT INTO notes SELECT g, g * 2, 'b' || g FROM generate_series(1, 50) g")
    conn.execute("INSERT INTO orders (kind, amount) VALUES (2, 1)")  # the sequence moved on through the fleet
    conn.execute("SELECT pgfleet.add_foreign_key('orders', 'orders_kind_fk', ARRAY['kind'], 'kinds', NULL, "
                 "on_delete => 'restrict')")  # on the shards only
    return schema


def _answers(conn: psycopg.Connection[Any], schema: str) -> list[list[tuple[Any, ...]]]:
    conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
    return [conn.execute(q.encode()).fetchall() for q in (*QUERIES, FACTS)]


def test_dump_restores_into_a_plain_server_with_the_same_answers(
        fleet: Fleet, cluster: LocalCluster, logical_db: str, tmp_path: Path, base_dir: Path) -> None:
    schema = logical_db
    dump = tmp_path / "all.dump"
    result = pgfleet_cli("dump", str(dump), directory=cluster.directory)
    assert result.returncode == 0, result.stderr
    # every distributed table of the database (other tests of this session may have left some)
    distributed = sum(1 for t in fleet.topology().tables if t.method != "reference")
    assert distributed >= 3 and f"{distributed} distributed tables" in result.stdout
    listing = client(cluster, "pg_restore", fleet.coordinator, "-l", str(dump)).stdout
    kinds = {e.kind for e in parse_toc(listing)}
    assert not kinds & {"SERVER", "USER MAPPING", "FOREIGN TABLE", "EVENT TRIGGER"}
    assert " pgfleet " not in listing and "postgres_fdw" not in listing
    with plain_server(cluster, base_dir / f"plain-{tmp_path.name}") as ep:
        client(cluster, "pg_restore", ep, "-d", ep.dbname, "--exit-on-error", str(dump))
        with connect(ep) as restored:
            assert restored.execute("SELECT count(*) FROM pg_foreign_server").fetchone() == (0,)
            assert restored.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgfleet%'").fetchone() == (0,)
            assert restored.execute(
                "SELECT relname, relkind FROM pg_class WHERE relnamespace = %s::regnamespace "
                "AND relname IN ('orders', 'events', 'sites', 'kinds') ORDER BY 1", (schema,)).fetchall() == [
                ("events", "r"), ("kinds", "r"), ("orders", "r"), ("sites", "r")]
            got = _answers(restored, schema)
            # the keys hold: a duplicate is refused, the serial goes on after the fleet's last value
            with pytest.raises(psycopg.errors.UniqueViolation):
                restored.execute("INSERT INTO orders (id, kind) VALUES (1, 1)")
            next_id = restored.execute("INSERT INTO orders (kind) VALUES (1) RETURNING id").fetchone()
            assert restored.execute("SELECT conname, confdeltype FROM pg_constraint WHERE contype = 'f' "
                                    "AND conrelid = 'orders'::regclass").fetchall() == [("orders_kind_fk", "r")]
            with pytest.raises(psycopg.errors.ForeignKeyViolation, match="orders_kind_fk"):
                restored.execute("INSERT INTO orders (kind) VALUES (99)")
        with fleet.new_coordinator_conn() as coord:
            want = _answers(coord, schema)
            fleet_next = coord.execute("SELECT max(id) FROM orders").fetchone()
    for query, a, b in zip(QUERIES, want[:-1], got[:-1], strict=True):
        assert a == b, query
    facts = {(r[0], r[1]): r[2:] for r in got[-1]}
    assert facts[("orders", "orders_pkey")][:2] == (True, True)
    assert facts[("orders", "orders_code_id_key")][:2] == (False, True)
    assert str(facts[("orders", "orders_placed")][2]).endswith("(placed DESC) WHERE (note IS NOT NULL)")
    assert facts[("events", "events_pkey")][:2] == (True, True)
    assert facts[("sites", "sites_pkey")][:2] == (True, True)
    assert facts[("kinds", "kinds_pkey")][:2] == (True, True)
    assert next_id is not None and fleet_next is not None and next_id[0] > fleet_next[0]
