"""Parsing and validating what the user asks for (pure, no server)."""

import pytest

from pgfleet.errors import SpecError
from pgfleet.spec import HashSpec, QualifiedName, parse_list_arg, parse_name, parse_range_bounds
from pgfleet.spec.distribution import parse_column


def test_names_fold_like_postgresql() -> None:
    assert parse_name("Products") == QualifiedName(None, "products")
    assert parse_name("Sales.Orders") == QualifiedName("sales", "orders")
    assert parse_name('"Sales"."Order.Items"') == QualifiedName("Sales", "Order.Items")
    assert str(QualifiedName("Sales", "x")) == '"Sales".x'


@pytest.mark.parametrize("bad", ["", "a.b.c", "x;drop table y", '"unterminated', "a..b", "1abc", "a" * 64])
def test_malformed_names_are_refused(bad: str) -> None:
    with pytest.raises(SpecError, match="malformed"):
        parse_name(bad)


def test_column_names() -> None:
    assert parse_column("ID") == "id"
    with pytest.raises(SpecError):
        parse_column("a.b")


def test_range_bounds() -> None:
    spec = parse_range_bounds("min,0,250000,max", ("w1", "w2"))
    assert [(s.lower, s.upper, s.node) for s in spec.shards] == [
        (None, "0", "w1"), ("0", "250000", "w2"), ("250000", None, "w1")]
    with pytest.raises(SpecError):
        parse_range_bounds("5")
    with pytest.raises(SpecError, match="min may only come first"):
        parse_range_bounds("0,min,5")


def test_list_shards() -> None:
    spec = parse_list_arg(["paris=w1", "lagos, abuja=w2"])
    assert [(s.values, s.node) for s in spec.shards] == [(("paris",), "w1"), (("lagos", "abuja"), "w2")]
    with pytest.raises(SpecError, match="given twice"):
        parse_list_arg(["paris=w1", "paris=w2"])
    with pytest.raises(SpecError, match="VALUE"):
        parse_list_arg(["paris"])


def test_shard_count_range() -> None:
    with pytest.raises(SpecError):
        HashSpec(0)
    assert HashSpec(32).shard_count == 32


def test_range_order_by_rank() -> None:
    from pgfleet.spec import RangeShard, RangeSpec
    from pgfleet.spec.distribution import check_list_distinct, check_range_order

    with pytest.raises(SpecError, match="range bound 1000 is given twice"):
        parse_range_bounds("min,1000,1000,max")
    spec = parse_range_bounds("min,b,a,max")
    with pytest.raises(SpecError, match="not ascending: b comes before a"):
        check_range_order(spec.shards, {"a": 1, "b": 2})
    check_range_order(spec.shards, {"a": 2, "b": 1})  # the key type's order decides, not Python's
    gap = RangeSpec((RangeShard("0", "10"), RangeShard("5", "20")))
    with pytest.raises(SpecError, match=r"ranges overlap: \[0, 10\) and \[5, 20\)"):
        check_range_order(gap.shards, {"0": 1, "5": 2, "10": 3, "20": 4})
    with pytest.raises(SpecError, match="'1' and '01' are the same value"):
        check_list_distinct(parse_list_arg(["1=w1", "01=w2"]).shards, {"1": 1, "01": 1})
