"""The values of an extended-protocol statement inlined as typed literals for a multi-shard plan (pure)."""

from __future__ import annotations

from pgfleet.router import protocol as p
from pgfleet.router.batches import Plan, Statement
from pgfleet.router import wire
from pgfleet.router.extmulti import bound_text, extended_reply, inline, probe_text

INT8, TEXT, INT4_ARRAY, NUMERIC = 20, 25, 1007, 1700


def typed(value: str, name: str) -> str:
    return "(" + value + '::"pg_catalog".' + name + ")"


def test_each_parameter_becomes_a_literal_of_its_described_type() -> None:
    text = "SELECT count(*) FROM t WHERE a = $1 AND b = $2 AND c = ANY($3) AND d = $1 -- $2"
    five = typed("'5'", '"int8"')
    assert inline(text, ["5", "it's", "{1,2}"], [INT8, TEXT, INT4_ARRAY]) == (
        "SELECT count(*) FROM t WHERE a = " + five + " AND b = " + typed("'it''s'", '"text"')
        + " AND c = ANY(" + typed("'{1,2}'", '"int4"[]') + ") AND d = " + five + " -- $2")


def test_null_and_text_after_non_ascii() -> None:
    assert inline("SELECT 'é', $1, $10 FROM t", [None] + ["7"] * 9, [NUMERIC] * 10) == (
        "SELECT 'é', " + typed("NULL", '"numeric"') + ", " + typed("'7'", '"numeric"') + " FROM t")


def test_what_cannot_be_inlined_exactly_is_refused() -> None:
    assert inline("SELECT $2 FROM t", ["1"], [INT8]) is None  # more parameters than values
    assert inline("SELECT $1 FROM t", ["1"], [16400]) is None  # a type of this database
    assert inline("SELECT $1 FROM t", ["a\0b"], [TEXT]) is None
    assert inline("SELECT FROM WHERE", [], []) is None


def test_probe_text_puts_nulls() -> None:
    assert probe_text("UPDATE t SET a = $1 WHERE b = $2") == "UPDATE t SET a = NULL WHERE b = NULL"


def plan(result_formats: tuple[int, ...] = (), max_rows: int = 0, params: tuple[bytes | None, ...] = (b"7",),
         param_formats: tuple[int, ...] = ()) -> Plan:
    return Plan((), p.Bind("", "", param_formats, params, result_formats), True, p.Execute("", max_rows), ())


def test_bound_text_only_for_text_results_and_the_whole_result() -> None:
    statement = Statement("SELECT count(*) FROM t WHERE a = $1", (), (INT8,), (p.Field("count", 0, 0, INT8, 8, -1, 0),))
    assert bound_text(plan(), statement) == "SELECT count(*) FROM t WHERE a = " + typed("'7'", '"int8"')
    assert bound_text(plan(params=((7).to_bytes(8, "big"),), param_formats=(1,)), statement) == bound_text(plan(), statement)
    assert bound_text(plan(result_formats=(1,)), statement) == bound_text(plan(), statement)  # re-encoded
    arrays = Statement(statement.sql, (), (INT8,), (p.Field("a", 0, 0, INT4_ARRAY, -1, -1, 0),))
    assert bound_text(plan(result_formats=(1,)), arrays) is None  # an array column in binary: the coordinator
    assert bound_text(plan(result_formats=(0,)), arrays) is not None
    mixed = Statement(statement.sql, (), (INT8,), (statement.columns or ())[:1] + (arrays.columns or ()))
    assert bound_text(plan(result_formats=(1, 0)), mixed) is None  # the array column is re-encoded too
    assert bound_text(plan(result_formats=(1, 0)), statement) is None  # more formats than columns
    assert bound_text(plan(max_rows=10), statement) == bound_text(plan(), statement)  # a row limit: see below
    assert bound_text(plan(params=(b"\x00\x01",), param_formats=(1,)), statement) is None  # unreadable binary value


def test_values_that_would_fail_at_bind_are_left_to_the_coordinator() -> None:
    assert inline("SELECT $1", ["not a number"], [INT8]) is None
    assert inline("SELECT $1", ["99999999999999999999"], [INT8]) is None
    assert inline("SELECT $1", ["40000"], [21]) is None  # int2
    assert inline("SELECT $1", [" 12 "], [INT8]) == "SELECT " + typed("' 12 '", '"int8"')
    assert inline("SELECT $1", ["1.5e3"], [NUMERIC]) is not None and inline("SELECT $1", ["1,5"], [NUMERIC]) is None
    assert inline("SELECT $1", ["maybe"], [16]) is None and inline("SELECT $1", ["TRUE"], [16]) is not None


def test_a_row_limit_gives_that_many_rows_and_portal_suspended() -> None:
    columns = (p.Field("id", 0, 0, INT8, 8, -1, 0),)
    statement = Statement("SELECT id FROM t", (), (), columns)
    reply = b"".join([p.RowDescription(columns).encode(), *(p.DataRow((str(i).encode(),)).encode() for i in range(3)),
                      p.CommandComplete("SELECT 3").encode(), p.ReadyForQuery("I").encode()])

    def types(max_rows: int) -> list[bytes]:
        limited = Plan((), p.Bind("", "", (), (), ()), False, p.Execute("", max_rows), ())
        return [t for t, _ in wire.Framer().feed(extended_reply(reply, statement, limited))]

    assert types(0) == [b"2", b"D", b"D", b"D", b"C", b"Z"]
    assert types(2) == [b"2", b"D", b"D", b"s", b"Z"]
    assert types(3) == [b"2", b"D", b"D", b"D", b"s", b"Z"]  # as PostgreSQL: it does not look ahead
    assert types(4) == [b"2", b"D", b"D", b"D", b"C", b"Z"]
