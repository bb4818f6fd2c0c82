"""Indexes of distributed and reference tables are listed, renamed and dropped on the coordinator as on
one server, and the shards follow: also the indexes a table had when it was distributed."""

from __future__ import annotations

import pytest

from conftest import shard_rows
from pgfleet.cluster.fleet import Fleet
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec


def shard_indexes(fleet: Fleet, schema: str, table: str) -> set[str]:
    """Index names over the shard tables (or copies) of ``table``, without the shard suffix."""
    return {str(r[0]) for r in shard_rows(
        fleet, QualifiedName(schema, table),
        "SELECT regexp_replace(c.relname, '_[0-9]+$', '') FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = %(shard)s::regclass")}


def coordinator_indexes(fleet: Fleet, table: str) -> set[str]:
    return {str(r[0]) for r in fleet.conn().execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = %s", (table,)).fetchall()}


@pytest.mark.parametrize("how", ["cli", "sql"])
def test_listed_renamed_dropped(fleet: Fleet, schema: str, how: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE ix (id bigint PRIMARY KEY, a int, b text)")
    conn.execute("CREATE INDEX ix_a ON ix (a)")
    conn.execute("INSERT INTO ix SELECT g, g % 7, 'b' || g FROM generate_series(1, 100) g")
    if how == "cli":
        fleet.distribute(DistributeSpec(QualifiedName(schema, "ix"), "id", HashSpec(2)))
    else:
        conn.execute("SELECT pgfleet.distribute_table('ix', 'id', 2)")
    assert coordinator_indexes(fleet, "ix") == {"ix_a"}  # the primary key lives on the shards only
    assert shard_indexes(fleet, schema, "ix") == {"ix_pkey", "ix_a"}
    conn.execute("CREATE INDEX ix_b ON ix (b)")
    conn.execute("ALTER INDEX ix_b RENAME TO ix_bb")
    conn.execute("ALTER TABLE ix_a RENAME TO ix_aa")  # the other spelling
    assert coordinator_indexes(fleet, "ix") == {"ix_aa", "ix_bb"}
    assert shard_indexes(fleet, schema, "ix") == {"ix_pkey", "ix_aa", "ix_bb"}
    conn.execute("DROP INDEX ix_aa")
    conn.execute("CREATE INDEX ix_b ON ix (a, b)")  # an old shard name free again
    assert shard_indexes(fleet, schema, "ix") == {"ix_pkey", "ix_bb", "ix_b"}
    fleet.undistribute(QualifiedName(schema, "ix"))
    assert coordinator_indexes(fleet, "ix") == {"ix_pkey", "ix_bb", "ix_b"}
    assert conn.execute("SELECT count(*) FROM ix WHERE a = 3").fetchone() == (14,)


def test_reference_table_indexes(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE rx (id int PRIMARY KEY, a int)")
    conn.execute("CREATE INDEX rx_a ON rx (a)")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "rx")))
    conn.execute("ALTER INDEX rx_a RENAME TO rx_aa")
    assert shard_indexes(fleet, schema, "rx") == {"rx_pkey", "rx_aa"}
    conn.execute("DROP INDEX rx_aa")
    assert shard_indexes(fleet, schema, "rx") == {"rx_pkey"}
