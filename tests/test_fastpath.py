"""Fast paths return exactly what the coordinator returns, keep transactions correct, and fall back."""

from __future__ import annotations

import decimal
import os
import threading

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.loader import load_copy
from pgfleet.cluster.aggregate import aggregate
from pgfleet.cluster.router import Router, load
from pgfleet.copytext import CopyFormat
from pgfleet.errors import SpecError
from pgfleet.spec import (
    DistributeSpec,
    HashSpec,
    ListShard,
    ListSpec,
    QualifiedName,
    ReferenceSpec,
    parse_range_bounds,
)


@pytest.fixture
def data(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, grp int, val int, pad text)")
    conn.execute("INSERT INTO t SELECT g, g % 10, g % 997, 'p' || g FROM generate_series(1, 5000) g")
    conn.execute("CREATE TABLE items (t_id bigint, n int, qty int, PRIMARY KEY (t_id, n))")
    conn.execute("INSERT INTO items SELECT g, n, n * 2 FROM generate_series(1, 5000) g, generate_series(1, 3) n")
    conn.execute("CREATE TABLE grps (grp int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO grps SELECT g, 'g' || g FROM generate_series(0, 9) g")
    conn.execute("CREATE TABLE r (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO r SELECT g, 'v' || g FROM generate_series(1, 3000) g")
    conn.execute("CREATE TABLE sites (id int, city text NOT NULL, v int)")
    conn.execute("INSERT INTO sites SELECT g, (ARRAY['paris','lagos','rome'])[1 + g % 3], g FROM generate_series(1, 300) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(8)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "items"), "t_id", colocate_with=QualifiedName(schema, "t")))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "grps")))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "r"), "id", parse_range_bounds("min,1000,2000,max")))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "sites"), "city", ListSpec((
        ListShard(("paris", "rome"), "w1"), ListShard(("lagos",), "w2")))))
    return schema


def test_point_reads_match_the_coordinator(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    with Router(fleet) as r:
        for key in [1, 2, 3, 77, 4999, 5000, 6000]:
            q = "SELECT * FROM {} WHERE id = %s"
            assert r.fetchall(q, (key,), table=f"{data}.t", key=key) == conn.execute(
                "SELECT * FROM t WHERE id = %s", (key,)).fetchall()
            assert r.route(f"{data}.t", key).node in ("w1", "w2")
        with Router(fleet, simple=True) as simple:  # values bound in the client, simple protocol
            for key in [1, 77, 4999, -3]:
                assert simple.fetchall("SELECT * FROM {} WHERE id = %s", (key,), table=f"{data}.t", key=key) == \
                    conn.execute("SELECT * FROM t WHERE id = %s", (key,)).fetchall()
            assert simple._conn(simple.route(f"{data}.t", 1).node).cursor_factory is psycopg.ClientCursor
        for key in [5, 1000, 1999, 2000, 2999]:
            assert r.fetchall("SELECT * FROM {} WHERE id = %s", (key,), table=f"{data}.r", key=key) == \
                conn.execute("SELECT * FROM r WHERE id = %s", (key,)).fetchall()
        for city in ("paris", "lagos", "rome"):
            got = r.fetchall("SELECT id, v FROM {} WHERE city = %s ORDER BY id", (city,), table=f"{data}.sites", key=city)
            assert got == conn.execute("SELECT id, v FROM sites WHERE city = %s ORDER BY id", (city,)).fetchall()
        # co-located join and a join with a reference table run on the worker
        q = ("SELECT t.id, i.n, i.qty, g.label FROM {t} t JOIN {items} i ON i.t_id = t.id "
             "JOIN {grps} g ON g.grp = t.grp WHERE t.id = %s ORDER BY i.n")
        names = {"t": f"{data}.t", "items": f"{data}.items", "grps": f"{data}.grps"}
        for key in (10, 11, 4321):
            assert r.route(names, key).node is not None
            assert r.fetchall(q, (key,), table=names, key=key) == conn.execute(
                "SELECT t.id, i.n, i.qty, g.label FROM t JOIN items i ON i.t_id = t.id JOIN grps g ON g.grp = t.grp "
                "WHERE t.id = %s ORDER BY i.n", (key,)).fetchall()


def test_writes_and_transactions(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    table = f"{data}.t"
    with Router(fleet) as r:
        r.execute("INSERT INTO {} VALUES (%s, 1, 2, 'fast')", (9001,), table=table, key=9001)
        assert conn.execute("SELECT pad FROM t WHERE id = 9001").fetchone() == ("fast",)
        assert r.fetchone("UPDATE {} SET val = val + 1 WHERE id = %s RETURNING val", (9001,), table=table,
                          key=9001) == (3,)
        r.execute("DELETE FROM {} WHERE id = %s", (9001,), table=table, key=9001)
        assert conn.execute("SELECT count(*) FROM t WHERE id = 9001").fetchone() == (0,)
        # a wrong key is refused by the shard, never misplaced
        other = next(k for k in range(2, 100) if r.route(table, k) != r.route(table, 1))
        with pytest.raises(psycopg.errors.CheckViolation):
            r.execute("INSERT INTO {} VALUES (%s, 1, 1, 'x')", (other,), table=table, key=1)
        # a transaction on one shard commits or rolls back as a whole
        with pytest.raises(ZeroDivisionError), r.transaction(table, 1):
            r.execute("UPDATE {} SET pad = 'tx' WHERE id = %s", (1,), table=table, key=1)
            r.execute("UPDATE {} SET qty = 0 WHERE t_id = %s", (1,), table=f"{data}.items", key=1)
            raise ZeroDivisionError
        assert conn.execute("SELECT pad FROM t WHERE id = 1").fetchone() == ("p1",)
        with r.transaction(table, 1):
            r.execute("UPDATE {} SET pad = 'tx' WHERE id = %s", (1,), table=table, key=1)
        assert conn.execute("SELECT pad FROM t WHERE id = 1").fetchone() == ("tx",)
        far = next(k for k in range(2, 100) if r.route(table, k).node != r.route(table, 1).node)
        with pytest.raises(SpecError, match="already runs on another node"), r.transaction(table, 1):
            r.execute("SELECT 1 FROM {} WHERE id = %s", (far,), table=table, key=far)


def test_fallback_to_the_coordinator(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE plain (id int, v text)")
    conn.execute("INSERT INTO plain VALUES (1, 'a')")
    conn.execute("CREATE TABLE u (id uuid PRIMARY KEY, v int)")
    conn.execute("INSERT INTO u SELECT md5(g::text)::uuid, g FROM generate_series(1, 50) g")
    fleet.distribute(DistributeSpec(QualifiedName(data, "u"), "id", HashSpec(4)))
    with Router(fleet) as r:
        assert r.route(f"{data}.plain", 1).node is None
        assert r.fetchall("SELECT * FROM {} WHERE id = %s", (1,), table=f"{data}.plain", key=1) == [(1, "a")]
        key = conn.execute("SELECT id FROM u WHERE v = 7").fetchone()[0]  # type: ignore[index]
        assert r.route(f"{data}.u", key).node is None  # no client-side hash for uuid: coordinator
        assert r.fetchone("SELECT v FROM {} WHERE id = %s", (key,), table=f"{data}.u", key=key) == (7,)
        assert r.route({"a": f"{data}.t", "b": f"{data}.r"}, 5).node is None  # not co-located


def test_fanout_aggregates_match(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    got = aggregate(fleet, f"{data}.t", [("count", None), ("sum", "val"), ("min", "pad"), ("max", "id"),
                                          ("avg", "val")])
    want = conn.execute("SELECT count(*), sum(val), min(pad), max(id), avg(val) FROM t").fetchall()
    assert got[0][:4] == want[0][:4]
    assert round(got[0][4], 10) == round(want[0][4], 10)
    got = aggregate(fleet, f"{data}.t", [("count", None), ("sum", "val")], group_by=["grp"],
                    where="val > %s", params=[100])
    want = conn.execute("SELECT grp, count(*), sum(val) FROM t WHERE val > 100 GROUP BY grp ORDER BY grp").fetchall()
    assert got == want
    assert aggregate(fleet, f"{data}.t", [("count", None)], where="id < 0") == [(0,)]
    with pytest.raises(SpecError, match="not supported"):
        aggregate(fleet, f"{data}.t", [("stddev", "val")])


def test_parallel_load(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    rows = [(100000 + i, i % 10, i % 997, f"L{i}") for i in range(20000)]
    assert load(fleet, f"{data}.t", rows) == 20000
    assert conn.execute("SELECT count(*), sum(val) FROM t WHERE id >= 100000").fetchone() == (
        20000, sum(r[2] for r in rows))
    assert load(fleet, f"{data}.r", [(3500, "x"), (-10, "y")]) == 2  # range table, routed one by one
    assert conn.execute("SELECT v FROM r WHERE id IN (-10, 3500) ORDER BY id").fetchall() == [("y",), ("x",)]
    # all or nothing: a duplicate key on one shard rolls every shard back
    bad = [(200000 + i, 0, 0, "z") for i in range(1000)] + [(100005, 0, 0, "dup")]
    with pytest.raises(psycopg.errors.UniqueViolation):
        load(fleet, f"{data}.t", bad)
    assert conn.execute("SELECT count(*) FROM t WHERE id >= 200000").fetchone() == (0,)
    for w in fleet.topology().workers:
        with fleet.worker_conn(w) as wc:
            assert wc.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
    with pytest.raises(SpecError, match="must include the distribution key"):
        load(fleet, f"{data}.t", [(1, 2)], columns=["grp", "val"])
    assert decimal.Decimal(1) == 1


def test_fanout_read_and_atomic_write(fleet: Fleet, data: str) -> None:
    from pgfleet.cluster.router import fanout

    conn = fleet.conn()
    res = fanout(fleet, "SELECT count(*), sum(i.qty) FROM {t} t JOIN {i} i ON i.t_id = t.id WHERE t.grp = %s",
                 {"t": f"{data}.t", "i": f"{data}.items"}, [3])
    want = conn.execute("SELECT count(*), sum(i.qty) FROM t JOIN items i ON i.t_id = t.id WHERE t.grp = 3").fetchone()
    assert (sum(r[0] for r in res.rows), sum(r[1] or 0 for r in res.rows)) == want
    conn.execute("CREATE TABLE t2 (id bigint PRIMARY KEY, grp int, val int, pad text)")
    fleet.distribute(DistributeSpec(QualifiedName(data, "t2"), "id", colocate_with=QualifiedName(data, "t")))
    res = fanout(fleet, "INSERT INTO {t2} SELECT * FROM {t} WHERE id <= %s", {"t2": f"{data}.t2", "t": f"{data}.t"},
                 [1000], write=True)
    assert res.rowcount == 1000
    assert conn.execute("SELECT count(*), sum(val) FROM t2").fetchone() == conn.execute(
        "SELECT count(*), sum(val) FROM t WHERE id <= 1000").fetchone()
    # a failing shard rolls back every shard (duplicate keys in t2 now)
    with pytest.raises(psycopg.errors.UniqueViolation):
        fanout(fleet, "INSERT INTO {t2} SELECT * FROM {t} WHERE id <= %s", {"t2": f"{data}.t2", "t": f"{data}.t"},
               [1001], write=True)
    assert conn.execute("SELECT count(*) FROM t2").fetchone() == (1000,)
    with pytest.raises(SpecError, match="co-located"):
        fanout(fleet, "SELECT count(*) FROM {a} JOIN {b} USING (id)", {"a": f"{data}.t", "b": f"{data}.r"})


def test_copy_data_loaded_into_the_shards(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    rows = [(300000 + i * 7 - 50000, i % 10, -i, f"pad {i}\\twith tab") for i in range(30000)]
    text = "".join(f"{a}\t{b}\t{c}\t{d}\n" for a, b, c, d in rows).encode()
    result = load_copy(fleet, f"{data}.t", text, chunk_bytes=64 << 10)  # many chunks
    assert (result.rows, result.path, result.shards) == (30000, "shards", 8)
    got = conn.execute("SELECT id, grp, val, pad FROM t WHERE id >= 250000 ORDER BY id").fetchall()
    assert got == [(a, b, c, d.replace("\\t", "\t")) for a, b, c, d in sorted(rows)]
    # CSV with a header, the key in the middle, quoted commas, quotes and newlines; a pipe (not seekable)
    csv_rows = [(i, 1000000 + i, f'say "hi", {i}\nbye') for i in range(500)]
    body = "val,id,pad\n" + "".join(f'{v},{k},"{p.replace(chr(34), chr(34) * 2)}"\n' for v, k, p in csv_rows)
    r, w = os.pipe()
    threading.Thread(target=lambda: (os.write(w, body.encode()), os.close(w)), daemon=True).start()
    with os.fdopen(r, "rb") as pipe:
        result = load_copy(fleet, f"{data}.t", pipe, columns=["val", "id", "pad"], fmt=CopyFormat(csv=True, header=True))
    assert (result.rows, result.path) == (500, "shards")
    assert conn.execute("SELECT val, id, pad FROM t WHERE id >= 1000000 ORDER BY id").fetchall() == csv_rows
    # range table
    assert load_copy(fleet, f"{data}.r", b"-5\tneg\n3500\tmid\n9999\thigh\n").path == "shards"
    assert conn.execute("SELECT id, v FROM r WHERE id IN (-5, 3500, 9999) ORDER BY id").fetchall() == [
        (-5, "neg"), (3500, "mid"), (9999, "high")]


def test_copy_data_all_or_nothing_and_fallback(fleet: Fleet, data: str) -> None:
    conn = fleet.conn()
    before = conn.execute("SELECT count(*) FROM t").fetchone()
    dup = "".join(f"{400000 + i}\t0\t0\tz\n" for i in range(5000)) + "17\t0\t0\tdup\n"
    with pytest.raises(psycopg.errors.UniqueViolation):
        load_copy(fleet, f"{data}.t", dup.encode())
    assert conn.execute("SELECT count(*) FROM t").fetchone() == before
    for w in fleet.topology().workers:
        with fleet.worker_conn(w) as wc:
            assert wc.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
    # list tables are routed by the key's text; a city without a shard goes to the coordinator, which refuses it
    result = load_copy(fleet, f"{data}.sites", b"9001\tlagos\t1\n9002\trome\t2\n")
    assert (result.rows, result.path) == (2, "shards")
    assert conn.execute("SELECT city FROM sites WHERE id > 9000 ORDER BY id").fetchall() == [("lagos",), ("rome",)]
    with pytest.raises(psycopg.Error, match="no partition"):
        load_copy(fleet, f"{data}.sites", b"9003\tlagos\t1\n9004\toslo\t2\n")
    assert conn.execute("SELECT count(*) FROM sites WHERE id > 9002").fetchone() == (0,)
    # a reference table and a NULL key go through the coordinator, which applies PostgreSQL's own rules
    result = load_copy(fleet, f"{data}.grps", b"50\tfifty\n")
    assert (result.rows, result.path) == (1, "coordinator") and "not distributed" in str(result.reason)
    for w in fleet.topology().workers:
        with fleet.worker_conn(w) as wc:  # the reference copy on every worker has the row
            assert wc.execute(psycopg.sql.SQL("SELECT label FROM {}.grps WHERE grp = 50").format(
                psycopg.sql.Identifier(data))).fetchone() == ("fifty",)
    with pytest.raises(psycopg.errors.NotNullViolation):
        load_copy(fleet, f"{data}.t", b"500001\t0\t0\tok\n\\N\t0\t0\tnull key\n")
    assert conn.execute("SELECT count(*) FROM t WHERE id = 500001").fetchone() == (0,)
    result = load_copy(fleet, f"{data}.t", b"500002\t0\t0\ta\\\nb\n")  # an escaped newline inside a value
    assert result.path == "coordinator"
    assert conn.execute("SELECT pad FROM t WHERE id = 500002").fetchone() == ("a\nb",)
    # a pipe cannot be read again: a clear error, nothing loaded
    r, w = os.pipe()
    os.write(w, b"500003\t0\t0\tx\n\\N\t0\t0\ty\n")
    os.close(w)
    with os.fdopen(r, "rb") as pipe, pytest.raises(SpecError, match="cannot route the data"):
        load_copy(fleet, f"{data}.t", pipe)
    assert conn.execute("SELECT count(*) FROM t WHERE id = 500003").fetchone() == (0,)
    with pytest.raises(SpecError, match="has no column nope"):
        load_copy(fleet, f"{data}.t", b"1\n", columns=["nope"])
    with pytest.raises(SpecError, match="does not exist"):
        load_copy(fleet, f"{data}.missing", b"1\n")
