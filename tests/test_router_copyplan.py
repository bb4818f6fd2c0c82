"""The COPY planner (pure): which COPY statements the router runs itself and the shard statements it
builds; shard errors renamed to the logical table. No servers."""

from __future__ import annotations

import pytest
from pglast import parse_sql

from pgfleet.router import protocol as p
from pgfleet.router.copyin import CopyIn
from pgfleet.router.copyout import CopyOut, copy_output
from pgfleet.router.copyplan import plan_copy
from pgfleet.router.routes import MultiShard
from pgfleet.router.routing import session_neutral
from pgfleet.router.shardcopy import logical_error
from pgfleet.router.snapshot import RoutingTopology
from test_router_analyze import COUNTRIES, ORDERS, TOPOLOGY

TOPO = RoutingTopology(tables=TOPOLOGY.tables, relations=TOPOLOGY.relations, coordinator="coord")
PATH = ("public",)


def plan(statement: str) -> MultiShard | None:
    [raw] = parse_sql(statement)
    assert raw.stmt is not None
    return plan_copy(raw.stmt, statement, TOPO, PATH)


def test_copy_from_stdin_becomes_one_copy_per_shard_without_header() -> None:
    found = plan("COPY orders FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';', NULL 'nil')")
    assert isinstance(found, CopyIn)
    assert found.options.header and found.options.fmt.csv and found.options.fmt.delimiter == ";"
    assert found.coordinator == "coord" and found.columns == ()
    assert found.statements == tuple(
        f"""COPY "public"."{s.shard_table}" FROM STDIN (FORMAT csv, DELIMITER ';', NULL 'nil')""" for s in ORDERS.shards)


def test_copy_to_stdout_with_columns_and_header() -> None:
    found = plan('COPY public.orders (note, id) TO STDOUT (FORMAT csv, HEADER true)')
    assert isinstance(found, CopyOut)
    first = ORDERS.shards[0].shard_table
    assert found.statements[0] == f'COPY "public"."{first}" ("note", "id") TO STDOUT (FORMAT csv)'
    assert found.header == f'COPY (SELECT "note", "id" FROM "public"."{first}" LIMIT 0) TO STDOUT (FORMAT csv, HEADER true)'


@pytest.mark.parametrize("statement", [
    "COPY countries FROM STDIN",  # reference table
    "COPY orders FROM STDIN WHERE id > 5",
    "COPY (SELECT * FROM orders) TO STDOUT",
    "COPY orders FROM '/tmp/x'",
    "COPY orders TO PROGRAM 'cat'",
    "COPY orders FROM STDIN (FORMAT binary)",
    "COPY orders FROM STDIN (HEADER match)",
    "COPY orders FROM STDIN (FREEZE)",
    "COPY orders FROM STDIN (FORMAT csv, QUOTE '''')",
    "COPY orders FROM STDIN (FORMAT csv, FORCE_NULL (note))",
    "COPY orders (id, amount) FROM STDIN",  # leaves columns to the coordinator's defaults
    "COPY orders (id, nope, customer, amount, note) FROM STDIN",
    "COPY local_t FROM STDIN",
    "COPY orders FROM STDIN (DELIMITER 'ab')",
])
def test_the_coordinator_keeps(statement: str) -> None:
    assert plan(statement) is None


def test_copy_of_a_table_is_session_neutral_but_not_with_where() -> None:
    assert session_neutral("COPY orders FROM STDIN")
    assert session_neutral("COPY orders TO STDOUT (FORMAT csv)")
    assert not session_neutral("COPY orders FROM STDIN WHERE nextval('s') > 0")
    assert not session_neutral("COPY orders FROM '/tmp/x'")
    assert COUNTRIES.is_reference


def test_shard_errors_name_the_logical_table() -> None:
    shard = ORDERS.shards[1]
    error = p.ErrorResponse((("S", "ERROR"), ("C", "23505"), ("M", f'duplicate key value violates unique constraint '
                             f'"orders_pkey_{shard.shard_id}"'), ("D", "Key (id)=(42) already exists."),
                             ("W", f"COPY {shard.shard_table}, line 397"), ("t", shard.shard_table),
                             ("n", f"orders_pkey_{shard.shard_id}"), ("s", "public")))
    renamed = p.decode_backend(b"E", logical_error(error, ORDERS, ORDERS.shards)[5:])
    assert isinstance(renamed, p.ErrorResponse)
    assert dict(renamed.fields) == {"S": "ERROR", "C": "23505", "D": "Key (id)=(42) already exists.",
                                    "M": 'duplicate key value violates unique constraint "orders_pkey"',
                                    "W": "COPY orders", "t": "orders", "n": "orders_pkey", "s": "public"}


def test_copy_output_is_cut_without_framing_every_row() -> None:
    rows = b"".join(p.CopyData(f"{i}\tx\n".encode()).encode() for i in range(3))
    reply = (p.CopyOutResponse(0, (0, 0)).encode() + rows + b"c\x00\x00\x00\x04" + p.CommandComplete("COPY 3").encode()
             + p.ReadyForQuery("T").encode())
    out = copy_output(reply)
    assert out is not None and out.data == rows and out.rows == 3
    assert out.response == p.CopyOutResponse(0, (0, 0)).encode()
    failed = p.error_response("42501", "permission denied", severity="ERROR").encode() + p.ReadyForQuery("E").encode()
    assert copy_output(failed) is None
