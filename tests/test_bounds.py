"""Range bounds and list values are checked with the key's type before any shard exists."""

from __future__ import annotations

import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.errors import SpecError
from pgfleet.spec import DistributeSpec, ListShard, ListSpec, QualifiedName, parse_list_arg, parse_range_bounds

CASES = [
    ("int", parse_range_bounds("min,2000,1000,max"), r"range bounds are not ascending: 2000 comes before 1000"),
    ("int", parse_range_bounds("min,1000,01000,max"), r"range bounds 1000 and 01000 are the same value"),
    ("int", parse_range_bounds("0,100,abc"), r"'abc' is not a value of the key id \(integer\)"),
    ("text", parse_range_bounds("min,9,10,max"), r"range bounds are not ascending: 9 comes before 10"),
    ("date", parse_range_bounds("2024-02-01,2024-01-01"), r"not ascending: 2024-02-01 comes before 2024-01-01"),
    ("int", parse_list_arg(["1=w1", "01,2=w2"]), r"list values '1' and '01' are the same value of the key"),
    ("int", parse_list_arg(["1=w1", "x=w2"]), r"'x' is not a value of the key id"),
    ("int", parse_list_arg(["1=w1", "2=w9"]), r"unknown node 'w9'"),
]


@pytest.mark.parametrize(("key_type", "method", "message"), CASES)
def test_bad_bounds_are_refused_before_anything_is_created(fleet: Fleet, schema: str, key_type: str,
                                                           method: object, message: str) -> None:
    conn = fleet.conn()
    conn.execute(f"CREATE TABLE t (id {key_type} PRIMARY KEY, v text)".encode())
    conn.execute("INSERT INTO t VALUES ('2024-01-05', 'x')" if key_type == "date" else "INSERT INTO t VALUES ('5', 'x')")
    ids = conn.execute("SELECT last_value FROM pgfleet.shard_id_seq").fetchone()
    with pytest.raises(SpecError, match=message):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", method))  # type: ignore[arg-type]
    # nothing was attempted: no operation, no shard ids, the table as it was
    assert conn.execute("SELECT count(*) FROM pgfleet.operations WHERE table_name = %s",
                        (f"{schema}.t",)).fetchone() == (0,)
    assert conn.execute("SELECT last_value FROM pgfleet.shard_id_seq").fetchone() == ids
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 't'::regclass").fetchone() == ("r",)


def test_good_bounds_still_distribute(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id text PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES ('05'), ('20'), ('9')")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", parse_range_bounds("min,10,9,max")))
    counts = sorted(int(r[0]) for r in conn.execute("SELECT count(*) FROM t GROUP BY tableoid").fetchall())
    assert counts == [1, 1, 1]  # '05' < '10' <= '20' < '9' in text order: one row per range
    lst = ListSpec((ListShard(("1", "2"), "w1"), ListShard(("3",), "w2")))
    conn.execute("CREATE TABLE l (id int PRIMARY KEY)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "l"), "id", lst))
    conn.execute("INSERT INTO l VALUES (1), (2), (3)")
    assert sorted(int(r[0]) for r in conn.execute("SELECT count(*) FROM l GROUP BY tableoid").fetchall()) == [1, 2]
