"""Names of 63 bytes (NAMEDATALEN-1), ASCII and multibyte: shards, their indexes and constraints stay unique."""

from __future__ import annotations

import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.plan.tables import shard_object_name
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

LONG_NAMES = ["a" * 63, "é" * 31 + "x", "€" * 21, "😀" * 15 + "abc", "short"]


def test_shard_object_names_fit_and_stay_distinct() -> None:
    names = [*LONG_NAMES, "a" * 57 + "_pkey", "a" * 56 + "_v_key", "a" * 56, "b" * 50]
    made = {(n, i): shard_object_name(n, i) for n in names for i in (102001, 102002, 9_999_999_999)}
    assert len(set(made.values())) == len(made)
    for (name, sid), result in made.items():
        assert len(result.encode()) <= 63 and result.endswith(f"_{sid}")
        assert result.encode().decode() == result  # whole characters only
        if len(name.encode()) + len(str(sid)) + 1 <= 63:
            assert result == f"{name}_{sid}"


def test_sql_function_agrees_with_python(fleet: Fleet) -> None:
    conn = fleet.conn()
    for name in [*LONG_NAMES, "a" * 57 + "_pkey", "x" * 55, "x" * 56, "x" * 57]:
        for sid in (102001, 12345678901):
            row = conn.execute("SELECT pgfleet.shard_object_name(%s, %s)", (name, sid)).fetchone()
            assert row == (shard_object_name(name, sid),)


def _shard_indexes(fleet: Fleet, table: QualifiedName) -> list[tuple[str, int]]:
    """(shard table, number of indexes) for every shard of ``table``, read on its worker."""
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == table)
    found = []
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            row = w.execute("SELECT count(*) FROM pg_index WHERE indrelid = to_regclass(%s)",
                            (sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w),)).fetchone()
            assert row is not None
            found.append((shard.shard_table, int(row[0])))
    return found


@pytest.mark.parametrize("name", LONG_NAMES[:3], ids=["ascii63", "2byte63", "3byte63"])
def test_long_table_name_with_constraints_and_indexes(fleet: Fleet, schema: str, name: str) -> None:
    conn = fleet.conn()
    t = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, v int, w text, UNIQUE (id, v))").format(t))
    conn.execute(sql.SQL("CREATE INDEX ON {} (w)").format(t))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, g, 'w' || g FROM generate_series(1, 1000) g").format(t))
    qn = QualifiedName(schema, name)
    assert fleet.distribute(DistributeSpec(qn, "id", HashSpec(8))) == 1000
    shards = _shard_indexes(fleet, qn)
    assert len(shards) == 8 and all(n == 3 for _, n in shards), shards
    assert all(len(s.encode()) <= 63 for s, _ in shards)
    assert conn.execute(sql.SQL("SELECT count(*), count(DISTINCT w) FROM {}").format(t)).fetchone() == (1000, 1000)
    # DDL after distribution: an index with a 63-byte name reaches every shard, and its DROP too
    index = name[:-3] + "idx" if name.isascii() else "ü" * 30 + "ix_"
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (v)").format(sql.Identifier(index), t))
    assert all(n == 4 for _, n in _shard_indexes(fleet, qn))
    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index)))
    assert all(n == 3 for _, n in _shard_indexes(fleet, qn))
    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN z int DEFAULT 7").format(t))
    assert conn.execute(sql.SQL("SELECT sum(z) FROM {}").format(t)).fetchone() == (7000,)


def test_long_reference_table_name(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    name = "r" * 63
    t = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, code text UNIQUE)").format(t))
    conn.execute(sql.SQL("CREATE INDEX ON {} (lower(code))").format(t))
    conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 'a'), (2, 'b')").format(t))
    assert fleet.reference(ReferenceSpec(QualifiedName(schema, name))) == 2
    conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'c')").format(t))
    for shard, count in _shard_indexes(fleet, QualifiedName(schema, name)):
        assert (shard, count) == (name, 3)
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(t)).fetchone() == (3,)
