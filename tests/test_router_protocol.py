"""The wire-protocol codec without servers: byte layouts from the protocol documentation, round trips of
every message type (hypothesis), incremental framing, and malformed or oversized input."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgfleet.router import protocol as p
from pgfleet.router import wire

texts = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)
values = st.one_of(st.none(), st.binary(max_size=40))
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
formats = st.lists(st.integers(0, 1), max_size=5).map(tuple)
kinds = st.sampled_from(["S", "P"])
fields = st.lists(st.tuples(st.sampled_from("SVCMDHPpqWstcdnFLR"), texts), max_size=6).map(tuple)

FRONTEND_MESSAGES = st.one_of(
    st.builds(p.Query, texts),
    st.builds(p.Parse, texts, texts, st.lists(u32, max_size=5).map(tuple)),
    st.builds(p.Bind, texts, texts, formats, st.lists(values, max_size=5).map(tuple), formats),
    st.builds(p.Describe, kinds, texts),
    st.builds(p.Close, kinds, texts),
    st.builds(p.Execute, texts, i32),
    st.builds(p.CopyData, st.binary(max_size=100)),
    st.builds(p.CopyFail, texts),
    st.builds(p.FunctionCall, u32, formats, st.lists(values, max_size=4).map(tuple), st.integers(0, 1)),
    st.builds(p.AuthResponse, st.binary(max_size=60)),
    st.sampled_from([p.Sync(), p.Flush(), p.Terminate(), p.CopyDone()]),
)

BACKEND_MESSAGES = st.one_of(
    st.builds(p.Authentication, st.sampled_from([0, 3, 5, 10, 11, 12]), st.binary(max_size=40)),
    st.builds(p.BackendKeyData, i32, st.binary(min_size=4, max_size=256)),
    st.builds(p.CommandComplete, texts),
    st.builds(p.CopyInResponse, st.integers(0, 1), formats),
    st.builds(p.CopyOutResponse, st.integers(0, 1), formats),
    st.builds(p.CopyBothResponse, st.integers(0, 1), formats),
    st.builds(p.DataRow, st.lists(values, max_size=6).map(tuple)),
    st.builds(p.ErrorResponse, fields),
    st.builds(p.NoticeResponse, fields),
    st.builds(p.FunctionCallResponse, values),
    st.builds(p.NegotiateProtocolVersion, i32, st.lists(texts, max_size=3).map(tuple)),
    st.builds(p.NotificationResponse, i32, texts, texts),
    st.builds(p.ParameterDescription, st.lists(u32, max_size=6).map(tuple)),
    st.builds(p.ParameterStatus, texts, texts),
    st.builds(p.ReadyForQuery, st.sampled_from("ITE")),
    st.builds(p.RowDescription, st.lists(st.builds(p.Field, texts, u32, i16, u32, i16, i32, st.integers(0, 1)),
                                         max_size=4).map(tuple)),
    st.builds(p.CopyData, st.binary(max_size=100)),
    st.sampled_from([p.ParseComplete(), p.BindComplete(), p.CloseComplete(), p.NoData(), p.EmptyQueryResponse(),
                     p.PortalSuspended(), p.CopyDone()]),
)


@given(FRONTEND_MESSAGES)
def test_frontend_round_trip(message: p.Message) -> None:
    [(type_byte, payload)] = wire.Framer(limit=wire.frontend_limit).feed(message.encode())
    assert p.decode_frontend(type_byte, payload) == message


@given(BACKEND_MESSAGES)
def test_backend_round_trip(message: p.Message) -> None:
    [(type_byte, payload)] = wire.Framer().feed(message.encode())
    assert p.decode_backend(type_byte, payload) == message


@given(st.lists(BACKEND_MESSAGES, min_size=1, max_size=8), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_framing_any_chunking(messages: list[p.Message], cuts: list[int]) -> None:
    """The same messages come out whatever sizes the stream arrives in."""
    stream = b"".join(m.encode() for m in messages)
    framer = wire.Framer()
    got: list[p.Message] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += [p.decode_backend(t, b) for t, b in framer.feed(stream[pos:pos + step])]
        pos += step
        i += 1
    assert got == messages
    assert framer.buffered == 0


@given(st.lists(BACKEND_MESSAGES, min_size=1, max_size=8), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_message_cutter_any_chunking(messages: list[p.Message], cuts: list[int]) -> None:
    """The cutter hands on whole messages only, the same bytes whatever sizes the stream arrives in, and
    marks every message that is not a DataRow where it lies."""
    stream = b"".join(m.encode() for m in messages)
    cutter = wire.MessageCutter()
    out, marks = b"", []
    pos = i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        region, found = cutter.feed(stream[pos:pos + step])
        marks += [(t, len(out) + start, len(out) + end) for t, start, end in found]
        out += region
        pos += step
        i += 1
        framer = wire.Framer()
        framer.feed(out)
        assert framer.buffered == 0  # whole messages so far
    assert out == stream
    starts, expected = 0, []
    for m in messages:
        encoded = m.encode()
        if encoded[:1] != b"D":
            expected.append((encoded[:1], starts, starts + len(encoded)))
        starts += len(encoded)
    assert marks == expected


def test_message_cutter_refuses_a_bad_length() -> None:
    with pytest.raises(wire.ProtocolViolation):
        wire.MessageCutter().feed(b"D\x00\x00\x00\x02")
    with pytest.raises(wire.ProtocolViolation):
        wire.MessageCutter().feed(b"C\xff\xff\xff\xff")


def test_documented_byte_layouts() -> None:
    assert p.Query("SELECT 1").encode() == b"Q\x00\x00\x00\x0dSELECT 1\x00"
    assert p.Sync().encode() == b"S\x00\x00\x00\x04"
    assert p.ReadyForQuery("I").encode() == b"Z\x00\x00\x00\x05I"
    assert p.Execute("", 0).encode() == b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
    assert p.BackendKeyData(42, b"\x01\x02\x03\x04").encode() == b"K\x00\x00\x00\x0c\x00\x00\x00\x2a\x01\x02\x03\x04"
    assert wire.SSLRequest().encode() == struct.pack("!ii", 8, 80877103)
    assert wire.GSSENCRequest().encode() == struct.pack("!ii", 8, 80877104)
    assert wire.CancelRequest(7, b"abcd").encode() == struct.pack("!iii", 16, 80877102, 7) + b"abcd"
    assert p.DataRow((b"1", None)).encode() == b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"
    auth = p.decode_backend(b"R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0SCRAM-SHA-256-PLUS\0\0")
    assert isinstance(auth, p.Authentication) and auth.mechanisms == ("SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")
    assert p.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x").encode() == (
        b"p\x00\x00\x00\x1fSCRAM-SHA-256\x00\x00\x00\x00\x09n,,n=,r=x")


@given(st.lists(st.tuples(texts.filter(bool), texts), max_size=5), st.sampled_from([wire.PROTOCOL_3_0, wire.PROTOCOL_3_2]))
def test_startup_round_trip(params: list[tuple[str, str]], version: int) -> None:
    message = wire.StartupMessage(version, (("user", "alice"), *params))
    framer = wire.Framer(initial=True)
    [(type_byte, payload)] = framer.feed(message.encode())
    assert type_byte == b""
    assert wire.decode_initial(payload) == message
    assert message.get("user") == "alice"


@pytest.mark.parametrize("message", [wire.SSLRequest(), wire.GSSENCRequest(), wire.CancelRequest(-5, b"\x00" * 4),
                                     wire.CancelRequest(1 << 30, bytes(range(32)))])
def test_initial_requests_round_trip(message: wire.InitialMessage) -> None:
    [(_, payload)] = wire.Framer(initial=True).feed(message.encode())
    assert wire.decode_initial(payload) == message


def test_ssl_request_then_startup_on_one_stream() -> None:
    """After 'N' to an SSLRequest the client sends its startup message, again untyped."""
    framer = wire.Framer(initial=True)
    [(_, first)] = framer.feed(wire.SSLRequest().encode())
    assert wire.decode_initial(first) == wire.SSLRequest()
    framer.expect_initial()
    startup = wire.StartupMessage(wire.PROTOCOL_3_0, (("user", "u"), ("database", "d")))
    [(_, second)] = framer.feed(startup.encode() + p.Query("x").encode()[:3])
    assert wire.decode_initial(second) == startup
    framer.expect_typed()
    assert framer.feed(b"") == []
    assert framer.feed(p.Query("x").encode()[3:]) == [(b"Q", b"x\0")]


@pytest.mark.parametrize(("data", "message"), [
    (struct.pack("!i", 4), "invalid length of startup packet: 4"),
    (struct.pack("!i", 10_001), "invalid length of startup packet: 10001"),
    (struct.pack("!i", -1), "invalid length of startup packet: -1"),
])
def test_startup_length_checked(data: bytes, message: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=message):
        wire.Framer(initial=True).feed(data)


@pytest.mark.parametrize(("payload", "message"), [
    (struct.pack("!i", 2 << 16) + b"user\0x\0\0", "unsupported frontend protocol 2.0"),
    (struct.pack("!i", wire.PROTOCOL_3_0) + b"database\0x\0\0", "no PostgreSQL user name"),
    (struct.pack("!i", wire.PROTOCOL_3_0) + b"user\0x", "string without terminator"),
    (struct.pack("!i", wire.PROTOCOL_3_0) + b"user\0\xff\xfe\0\0", "not UTF-8"),
    (struct.pack("!ii", wire.CANCEL_REQUEST_CODE, 1) + b"ab", "cancel request: key of 2 bytes"),
    (struct.pack("!i", wire.SSL_REQUEST_CODE) + b"x", "trailing bytes"),
])
def test_bad_startup_packets(payload: bytes, message: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=message):
        wire.decode_initial(payload)


def test_oversized_and_undersized_messages() -> None:
    # a Sync may not be larger than the small-message limit, a Query may (up to 1 GB)
    with pytest.raises(wire.ProtocolViolation, match=r"invalid message length 10005 for message type b'S'"):
        wire.Framer(limit=wire.frontend_limit).feed(b"S" + struct.pack("!i", 10_005))
    assert wire.Framer(limit=wire.frontend_limit).feed(b"Q" + struct.pack("!i", 20_000)) == []
    with pytest.raises(wire.ProtocolViolation, match="invalid message length 1073741824"):
        wire.Framer(limit=wire.frontend_limit).feed(b"Q" + struct.pack("!i", 1 << 30))
    with pytest.raises(wire.ProtocolViolation, match="invalid message length 3"):
        wire.Framer().feed(b"Z" + struct.pack("!i", 3))


@pytest.mark.parametrize(("type_byte", "payload", "message"), [
    (b"?", b"", "invalid frontend message type"),
    (b"Q", b"SELECT 1", "string without terminator"),
    (b"S", b"x", "trailing bytes"),
    (b"B", b"\0\0\0\x01\0\x01", "truncated"),
    (b"B", b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", "negative value length -2"),
    (b"D", b"X\0", "DESCRIBE message subtype 'X'"),
    (b"E", b"\0\0\0", "truncated"),
])
def test_malformed_frontend_messages(type_byte: bytes, payload: bytes, message: str) -> None:
    with pytest.raises(wire.ProtocolViolation, match=message):
        p.decode_frontend(type_byte, payload)


@given(st.binary(max_size=64), st.sampled_from(sorted(p.FRONTEND)))
def test_garbage_never_crashes(payload: bytes, type_byte: bytes) -> None:
    """Any payload either decodes or raises ProtocolViolation; nothing else escapes."""
    with contextlib.suppress(wire.ProtocolViolation):
        p.decode_frontend(type_byte, payload)


def test_error_response_fields() -> None:
    error = p.error_response("08P01", "invalid message", hint="reconnect")
    decoded = p.decode_backend(b"E", error.payload())
    assert isinstance(decoded, p.ErrorResponse)
    assert (decoded.sqlstate, decoded.message, decoded.field("S"), decoded.field("H")) == (
        "08P01", "invalid message", "FATAL", "reconnect")


@given(st.lists(FRONTEND_MESSAGES, min_size=1, max_size=8), st.lists(st.integers(1, 50), min_size=1, max_size=20))
def test_scan_sees_the_types_feed_sees(messages: list[p.Message], cuts: list[int]) -> None:
    """The relay's payload-free scan finds the same message types, whatever the chunking."""
    stream = b"".join(m.encode() for m in messages)
    scanner = wire.Framer(limit=wire.frontend_limit)
    types: list[bytes] = []
    pos = i = 0
    while pos < len(stream):
        types += scanner.scan(stream[pos:pos + cuts[i % len(cuts)]])
        pos += cuts[i % len(cuts)]
        i += 1
    assert types == [m.TYPE for m in messages]
    assert scanner.buffered == 0


def test_scan_checks_lengths() -> None:
    scanner = wire.Framer(limit=wire.frontend_limit)
    assert scanner.scan(wire.frame(b"Q", b"SELECT 1\0")[:7]) == [b"Q"]
    with pytest.raises(wire.ProtocolViolation, match="invalid message length 99999 for message type b'S'"):
        wire.Framer(limit=wire.frontend_limit).scan(b"S" + struct.pack("!i", 99_999))


def test_search_path_statuses_in_a_chunk() -> None:
    status = p.ParameterStatus("search_path", '"$user", app').encode()
    chunk = p.CommandComplete("SET").encode() + status + p.ReadyForQuery("I").encode()
    assert wire.search_path_statuses(chunk) == ['"$user", app']
    # the same bytes inside a row are not a status: the length field does not match
    row = wire.frame(b"D", wire.int16(1) + wire.value(b"S\x00\x00\x00\x09search_path\x00x\x00"))
    assert wire.search_path_statuses(row + p.ReadyForQuery("I").encode()) == []
    assert wire.search_path_statuses(p.ParameterStatus("TimeZone", "UTC").encode()) == []
