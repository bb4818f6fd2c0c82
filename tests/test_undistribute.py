"""`pgfleet undistribute` and `pgfleet reshard`: rows back into a plain table, or into a new shard count;
verified, all or nothing, and the table answers as the same table that never left the coordinator."""

from __future__ import annotations

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import ExecuteError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, parse_range_bounds

from conftest import pgfleet_cli

ROWS = 3000
SETUP = """
CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, grp int NOT NULL, f float8, n numeric(12,3),
                  at timestamptz, span interval, doc jsonb, twice int GENERATED ALWAYS AS (grp * 2) STORED,
                  note text DEFAULT 'n/a', CHECK (grp >= 0));
CREATE INDEX {t}_grp ON {t} (grp);
CREATE UNIQUE INDEX {t}_grp_id ON {t} (grp, id);
INSERT INTO {t} (grp, f, n, at, span, doc, note)
SELECT g % 13, g / 7.0, g / 3.0, timestamptz '2024-01-01 00:00+00' + g * interval '37 minutes', g * interval '1 second',
       jsonb_build_object('g', g), CASE WHEN g % 5 = 0 THEN NULL ELSE 'row ' || g END
FROM generate_series(1, {n}) g;
"""
QUERIES = [
    "SELECT * FROM {t} ORDER BY id",
    "SELECT grp, count(*), sum(n), max(at) FROM {t} GROUP BY grp ORDER BY grp",
]
SHAPE = ("SELECT regexp_replace(indexrelid::regclass::text, '^{t}_', ''), indisprimary, indisunique, indkey::text "
         "FROM pg_index WHERE indrelid = '{t}'::regclass ORDER BY 1")


def _same(conn: psycopg.Connection[tuple[object, ...]], queries: list[str]) -> None:
    for q in queries:
        assert conn.execute(q.format(t="dist").encode()).fetchall() == \
            conn.execute(q.format(t="plain").encode()).fetchall(), q


def _worker_tables(cluster: LocalCluster, schema: str) -> list[str]:
    found = []
    for node in ("w1", "w2"):
        with psycopg.connect(cluster.endpoint(node).conninfo(), autocommit=True) as w:
            found += [f"{node}:{r[0]}" for r in w.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind = 'r'", (schema,)).fetchall()]
    return sorted(found)


def _setup(fleet: Fleet, schema: str, method: str = "hash") -> psycopg.Connection[tuple[object, ...]]:
    conn = fleet.conn()
    for t in ("plain", "dist"):
        conn.execute(SETUP.format(t=t, n=ROWS).encode())
    conn.execute(b"GRANT SELECT ON plain, dist TO PUBLIC")
    dist = QualifiedName(schema, "dist")
    fleet.distribute(DistributeSpec(dist, "id", HashSpec(4) if method == "hash"
                                    else parse_range_bounds("min,1000,2000,max")))
    return conn


@pytest.mark.parametrize("method", ["hash", "range"])
def test_cli_undistribute_gives_back_the_same_table(fleet: Fleet, cluster: LocalCluster, schema: str,
                                                    method: str) -> None:
    conn = _setup(fleet, schema, method)
    result = pgfleet_cli("undistribute", f"{schema}.dist", directory=cluster.directory)
    assert result.returncode == 0, result.stderr
    assert f"{ROWS} rows moved back and verified" in result.stdout
    assert _worker_tables(cluster, schema) == []
    assert conn.execute(b"SELECT relkind FROM pg_class WHERE oid = 'dist'::regclass").fetchone() == ("r",)
    assert conn.execute(b"SELECT count(*) FROM pgfleet.tables WHERE table_name = 'dist'").fetchone() == (0,)
    _same(conn, [*QUERIES, SHAPE])
    assert conn.execute(b"SELECT has_table_privilege('public', 'dist', 'SELECT')").fetchone() == (True,)
    for t in ("plain", "dist"):  # identity continues, generated column computed, as on one server
        conn.execute(f"INSERT INTO {t} (grp, at) VALUES (4, '2025-01-01')".encode())
    _same(conn, QUERIES)


def test_undistribute_is_all_or_nothing(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    """A shard that cannot be dropped at COMMIT (a view on the worker depends on it): nothing changes."""
    conn = _setup(fleet, schema)
    shard = conn.execute(b"SELECT shard_schema, shard_table FROM pgfleet.shards WHERE relid = 'dist'::regclass "
                         b"AND node = 'w2' LIMIT 1").fetchone()
    assert shard is not None
    with psycopg.connect(cluster.endpoint("w2").conninfo(), autocommit=True) as w:
        w.execute(f'CREATE VIEW "{shard[0]}".blocker AS SELECT * FROM "{shard[0]}"."{shard[1]}"'.encode())
    try:
        with pytest.raises(ExecuteError, match="changes could not be applied on node w2"):
            fleet.undistribute(QualifiedName(schema, "dist"))
        assert conn.execute(b"SELECT relkind FROM pg_class WHERE oid = 'dist'::regclass").fetchone() == ("p",)
        assert len(_worker_tables(cluster, schema)) == 4
        _same(conn, QUERIES)
    finally:
        with psycopg.connect(cluster.endpoint("w2").conninfo(), autocommit=True) as w:
            w.execute(f'DROP VIEW "{shard[0]}".blocker'.encode())


def test_reshard_with_the_same_count_spreads_a_table_over_every_worker(fleet: Fleet, cluster: LocalCluster,
                                                                       schema: str) -> None:
    """How a table placed on some workers (or before workers were added) is laid out over all of them: the
    README's answer to rebalancing."""
    conn = fleet.conn()
    conn.execute(SETUP.format(t="dist", n=ROWS).encode())
    fleet.distribute(DistributeSpec(QualifiedName(schema, "dist"), "id", HashSpec(4), nodes=("w1",)))
    placed = b"SELECT array_agg(DISTINCT node ORDER BY node) FROM pgfleet.shards WHERE relid = 'dist'::regclass"
    assert conn.execute(placed).fetchone() == (["w1"],)
    result = pgfleet_cli("reshard", f"{schema}.dist", "--shards", "4", directory=cluster.directory)
    assert result.returncode == 0, result.stderr
    assert conn.execute(placed).fetchone() == (["w1", "w2"],)
    assert conn.execute(b"SELECT count(*) FROM dist").fetchone() == (ROWS,)
    again = pgfleet_cli("reshard", f"{schema}.dist", "--shards", "4", directory=cluster.directory)
    assert again.returncode != 0 and "spread over every worker" in again.stdout + again.stderr


def test_reshard_changes_the_shard_count(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    conn = _setup(fleet, schema)
    result = pgfleet_cli("reshard", f"{schema}.dist", "--shards", "6", directory=cluster.directory)
    assert result.returncode == 0, result.stderr
    assert conn.execute(b"SELECT count(*), min(modulus), max(modulus) FROM pgfleet.shards "
                        b"WHERE relid = 'dist'::regclass").fetchone() == (6, 6, 6)
    assert len(_worker_tables(cluster, schema)) == 6
    _same(conn, QUERIES)
    for t in ("plain", "dist"):
        conn.execute(f"INSERT INTO {t} (grp, at) VALUES (4, '2025-01-01')".encode())
    _same(conn, QUERIES)
    again = pgfleet_cli("distribute", f"{schema}.dist", "--key", "id", directory=cluster.directory)
    assert again.returncode != 0 and "pgfleet undistribute" in again.stdout + again.stderr
