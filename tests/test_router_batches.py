"""Extended-protocol batches as data: which shapes may run on a worker, prepared statements confirmed by
the coordinator's replies, Bind values read as text, a worker's reply made the coordinator's."""

from __future__ import annotations

import struct

import pytest

from pgfleet.router import protocol as p
from pgfleet.router.batches import (
    Statement,
    Statements,
    classify,
    client_reply,
    parameter_values,
    read_bind,
)
from pgfleet.router.shardmap import NotPlaced


def messages(*items: p.Message) -> list[tuple[bytes, bytes]]:
    return [(m.TYPE, m.payload()) for m in items]


PARSE = p.Parse("", "SELECT * FROM t WHERE id = $1")
BIND = p.Bind("", "", (), (b"5",), ())
EXECUTE = p.Execute("", 0)
DESCRIBE = p.Describe("P", "")


@pytest.mark.parametrize(("batch", "routable"), [
    ((PARSE, BIND, DESCRIBE, EXECUTE, p.Sync()), True),
    ((BIND, EXECUTE, p.Sync()), True),
    ((p.Parse("a", "SELECT 1"), p.Describe("S", "a"), PARSE, BIND, EXECUTE, p.Sync()), True),
    ((PARSE, p.Sync()), False),  # nothing to execute
    ((PARSE, BIND, DESCRIBE, EXECUTE), False),  # no Sync
    ((PARSE, BIND, EXECUTE, BIND, EXECUTE, p.Sync()), False),  # several Executes
    ((p.Bind("c1", "", (), (b"5",), ()), p.Execute("c1", 0), p.Sync()), False),  # a named portal
    ((p.Close("S", "a"), BIND, EXECUTE, p.Sync()), False),
    ((p.Describe("P", ""), BIND, EXECUTE, p.Sync()), False),  # a portal described before its Bind
    ((BIND, p.Describe("S", ""), EXECUTE, p.Sync()), False),
    ((BIND, p.Flush(), EXECUTE, p.Sync()), False),
])
def test_classify(batch: tuple[p.Message, ...], routable: bool) -> None:
    plan = classify(messages(*batch))
    assert (plan is not None) == routable
    if plan is not None:
        assert plan.bind == BIND and plan.execute == EXECUTE
        assert plan.describe == (DESCRIBE in batch)
        assert plan.tail == tuple(messages(*batch[batch.index(BIND):]))


def test_statement_of_the_bind_is_the_last_parse_of_its_name_or_a_known_one() -> None:
    known = Statements()
    plan = classify(messages(p.Parse("", "SELECT 1"), PARSE, BIND, EXECUTE, p.Sync()))
    assert plan is not None and plan.statement(known) == Statement(PARSE.sql)
    plan = classify(messages(BIND, EXECUTE, p.Sync()))
    assert plan is not None and plan.statement(known) is None
    known.set("", Statement("SELECT 2"))
    assert plan.statement(known) == Statement("SELECT 2")


def _send(statements: Statements, *items: p.Message) -> None:
    for type_byte, payload in messages(*items):
        statements.sent(type_byte, payload)


def test_statements_follow_the_coordinators_replies() -> None:
    s = Statements()
    _send(s, p.Parse("a", "SELECT 1"), p.Parse("b", "SELECT 2"), p.Sync())
    assert not s.settled and s.get("a") is None  # not confirmed yet
    s.replies([b"1", b"E", b"Z"])  # the second Parse failed
    assert s.settled and s.get("a") == Statement("SELECT 1") and s.get("b") is None
    _send(s, p.Parse("a", "SELECT 3"), p.Sync())
    s.replies([b"E", b"Z"])  # already exists: the first one stays
    assert s.get("a") == Statement("SELECT 1")
    _send(s, p.Close("S", "a"), p.Parse("", "SELECT 4"), p.Sync(), p.Parse("", "SELEKT"), p.Sync())
    s.replies([b"3", b"1", b"Z"])
    assert s.get("a") is None and s.get("") == Statement("SELECT 4")
    s.replies([b"E", b"Z"])  # a failed unnamed Parse leaves no unnamed statement
    assert s.get("") is None and s.settled


def test_statements_owed_replies_and_a_query_drop_the_unnamed_statement() -> None:
    s = Statements()
    s.owed(1)  # a Query sent before tracking began
    _send(s, p.Parse("", "SELECT 1"), p.Flush())
    s.replies([b"Z"])  # the Query's
    assert s.get("") is None and not s.settled
    s.replies([b"1"])  # answered before its Sync is sent (Flush)
    assert s.get("") == Statement("SELECT 1")
    _send(s, p.Sync(), p.Query("SELECT 5"))
    s.replies([b"Z"])
    assert s.get("") == Statement("SELECT 1")
    s.replies([b"T", b"D", b"C", b"Z"])
    assert s.get("") is None and s.settled


def test_parameter_values_text_and_binary() -> None:
    bind = p.Bind("", "", (1, 1, 0, 1, 1, 1), (struct.pack("!q", -7), struct.pack("!h", 3), b"12", "é".encode(),
                                                None, b"\x00\x01"), ())
    values = parameter_values(bind, (20, 21, 23, 25, 23, 1700))
    assert len(values) == 6
    assert values[0] == "-7" and values[1] == "3" and values[2] == "12" and values[3] == "é" and values[4] is None
    with pytest.raises(NotPlaced, match="binary data of type 1700"):
        values[5]  # numeric in binary: not read here
    assert list(parameter_values(p.Bind("", "", (1,), (b"\x00\x00\x00\x05", struct.pack("!i", 6)), ()), (23, 23))) \
        == ["5", "6"]  # one format for all
    with pytest.raises(NotPlaced, match="4 bytes of binary data"):
        parameter_values(p.Bind("", "", (1,), (b"\x00\x00\x00\x05",), ()), (20,))[0]
    with pytest.raises(NotPlaced, match="UTF-8"):
        parameter_values(p.Bind("", "", (), (b"\xff",), ()), (25,))[0]


def test_binary_values_of_other_types_read_as_their_text() -> None:
    raw = (b"\x01", struct.pack("!d", 0.1), struct.pack("!f", -2.5), bytes(range(16)), struct.pack("!i", -1),
           struct.pack("!q", 86_400_000_005), struct.pack("!q", (1 << 63) - 1), struct.pack("!d", float("nan")))
    values = parameter_values(p.Bind("", "", (1,), raw, ()), (16, 701, 700, 2950, 1082, 1184, 1114, 701))
    assert list(values) == ["true", "0.1", "-2.5", "00010203-0405-0607-0809-0a0b0c0d0e0f", "1999-12-31",
                            "2000-01-02 00:00:00.000005+00", "infinity", "NaN"]
    with pytest.raises(NotPlaced, match="binary data of type 16"):
        parameter_values(p.Bind("", "", (1,), (b"\x02",), ()), (16,))[0]
    with pytest.raises(NotPlaced, match="binary data of type 1114"):
        parameter_values(p.Bind("", "", (1,), (struct.pack("!q", -(1 << 62)),), ()), (1114,))[0]  # before year 1


def test_client_reply_drops_the_workers_parse_complete_and_describes_as_the_coordinator() -> None:
    coordinator = (p.Field("id", table_oid=16500, column=1, type_oid=20, type_size=8),
                   p.Field("note", table_oid=16500, column=4, type_oid=25))
    worker = tuple(p.Field(f.name, 17000, 2, f.type_oid, f.type_size, f.type_modifier, 1) for f in coordinator)
    statement = Statement("SELECT id, note FROM t WHERE id = $1", (), (20,), coordinator)
    rest = p.DataRow((b"\x00" * 8, b"x")).encode() + p.CommandComplete("SELECT 1").encode() + p.ReadyForQuery("I").encode()
    reply = p.ParseComplete().encode() + p.BindComplete().encode() + p.RowDescription(worker).encode() + rest
    bind = p.Bind("", "s", (), (b"1",), (1, 0))
    out, parsed = client_reply(reply, parsed=True, statement=statement, bind=bind)
    expected_fields = (coordinator[0].__class__(**{**coordinator[0].__dict__, "format": 1}), coordinator[1])
    assert parsed and out == p.BindComplete().encode() + p.RowDescription(expected_fields).encode() + rest
    error = p.error_response("42P01", "relation does not exist", severity="ERROR").encode() + p.ReadyForQuery("I").encode()
    assert client_reply(error, parsed=True, statement=statement, bind=bind) == (error, False)
    no_describe = p.BindComplete().encode() + rest
    assert client_reply(no_describe, parsed=False, statement=statement, bind=bind) == (no_describe, True)


@pytest.mark.parametrize("bind", [
    BIND, p.Bind("", "s1", (1, 0), (struct.pack("!q", 5), None, b""), (1,)), p.Bind("", "é", (), (), ()),
])
def test_read_bind_reads_what_the_codec_writes(bind: p.Bind) -> None:
    assert read_bind(bind.payload()) == p.decode_frontend(b"B", bind.payload()) == bind


@pytest.mark.parametrize("payload", [
    p.Bind("c1", "", (), (), ()).payload(),  # a named portal
    BIND.payload()[:-1],  # truncated
    BIND.payload() + b"\0",  # trailing bytes
    b"\0s\0\0\0\0\x01\x00\x00\x00\x09ab\0\0",  # a value longer than the message
    b"\0\xff\0\0\0\0\0\0\0",  # a name that is not UTF-8
])
def test_read_bind_refuses_what_it_does_not_route(payload: bytes) -> None:
    assert read_bind(payload) is None
