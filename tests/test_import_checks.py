"""`pgfleet import` checks a topology file against the workers before it applies anything."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from conftest import pgfleet_cli
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster


def _forget(fleet: Fleet, schema: str, table: str) -> None:
    """The coordinator loses the table and its catalog rows; the shards stay on the workers."""
    conn = fleet.conn()
    with conn.transaction():
        conn.execute("SELECT set_config('pgfleet.internal', 'on', true)")
        oid = conn.execute(sql.SQL("SELECT {}::regclass::oid").format(
            sql.Literal(sql.Identifier(schema, table).as_string(conn)))).fetchone()
        assert oid is not None
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
        conn.execute("DELETE FROM pgfleet.tables WHERE relid = %s", (oid[0],))


def _catalog(fleet: Fleet, schema: str) -> tuple[Any, ...]:
    conn = fleet.conn()
    row = conn.execute("SELECT (SELECT count(*) FROM pgfleet.tables WHERE schema_name = %s), "
                       "(SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       " WHERE n.nspname = %s), (SELECT count(*) FROM pgfleet.colocation_groups)",
                       (schema, schema)).fetchone()
    assert row is not None
    return tuple(row)


def _spoil_shard_missing(t: dict[str, Any]) -> None:
    del t["shards"][1]


def _spoil_shard_renamed(t: dict[str, Any]) -> None:
    t["shards"][2]["shard_table"] = "no_such_shard"


def _spoil_column_type(t: dict[str, Any]) -> None:
    next(c for c in t["columns"] if c["name"] == "v")["type"] = "integer"


@pytest.mark.parametrize(("spoil", "message"), [
    (_spoil_shard_missing, r"\.t: shard index 1 is missing in the topology file \(3 shards\)"),
    (_spoil_shard_renamed, r'shard table .*\."?no_such_shard"? \(shard \d+\) does not exist on node w\d'),
    (_spoil_column_type, r'on node w\d shard .*\."?t_\d+"? differs: its column v is text, the topology file says '
                         r"\(id bigint, v integer\)"),
], ids=["missing-shard", "absent-shard-table", "column-type"])
def test_import_refuses_a_file_that_does_not_match_the_workers(fleet: Fleet, cluster: LocalCluster, schema: str,
                                                               tmp_path: Path, spoil: Any, message: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    conn.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 400) g")
    proc = pgfleet_cli("distribute", f"{schema}.t", "--key", "id", "--shards", "4", directory=cluster.directory)
    assert proc.returncode == 0, proc.stderr
    exported = tmp_path / "topology.json"
    assert pgfleet_cli("export", str(exported), directory=cluster.directory).returncode == 0
    data = json.loads(exported.read_text())
    data["tables"] = [t for t in data["tables"] if t["schema"] == schema]
    _forget(fleet, schema, "t")
    before = _catalog(fleet, schema)

    bad = copy.deepcopy(data)
    spoil(bad["tables"][0])
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    proc = pgfleet_cli("import", str(bad_file), directory=cluster.directory)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "nothing was imported" in err
    import re

    assert re.search(message, err), err
    assert _catalog(fleet, schema) == before

    # the right file still imports, and every row is there
    good_file = tmp_path / "good.json"
    good_file.write_text(json.dumps(data))
    proc = pgfleet_cli("import", str(good_file), directory=cluster.directory)
    assert proc.returncode == 0, proc.stderr
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (400,)


def test_coverage_of_ranges_lists_and_hash() -> None:
    from pgfleet.errors import TopologyError
    from pgfleet.plan.coverage import check_coverage
    from pgfleet.spec import QualifiedName
    from pgfleet.topology.model import Shard

    name = QualifiedName("s", "t")

    def shard(i: int, **bound: Any) -> Shard:
        return Shard(100 + i, 0, i, "w1", "s", f"t_{100 + i}", "f", f"t_{100 + i}", **bound)

    check_coverage(name, "range", [shard(0, lower=None, upper="10"), shard(1, lower="10", upper=None)])
    with pytest.raises(TopologyError, match="shard 100 ends at 10 but shard 101 starts at 20"):
        check_coverage(name, "range", [shard(0, lower=None, upper="10"), shard(1, lower="20", upper=None)])
    with pytest.raises(TopologyError, match="value 'a' is in shards 100 and 101"):
        check_coverage(name, "list", [shard(0, values=("a",)), shard(1, values=("b", "a"))])
    with pytest.raises(TopologyError, match="has modulus 3 remainder 1; 2 hash shards need modulus 2"):
        check_coverage(name, "hash", [shard(0, modulus=2, remainder=0), shard(1, modulus=3, remainder=1)])
