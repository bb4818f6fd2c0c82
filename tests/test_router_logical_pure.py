"""logical.py without servers: shard names in errors and notices, and RowDescriptions, in the logical
table's terms."""

from __future__ import annotations

from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.logical import LogicalNames, description_at
from pgfleet.router.routes import Shard
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import QualifiedName
from pgfleet.topology.model import Shard as CatalogShard


def topology() -> RoutingTopology:
    shards = tuple(CatalogShard(shard_id=102000 + i, table_oid=16500, index=i, node=f"w{i % 2 + 1}",
                                shard_schema="pgfleet_shards", shard_table=f"orders_{102000 + i}", foreign_schema="s",
                                foreign_table=f"orders_{i}", modulus=2, remainder=i) for i in range(2))
    orders = RoutedTable(oid=16500, name=QualifiedName("app", "orders"), method="hash", key="id", colocation_id=1,
                         shards=shards, key_type="bigint", columns=("id", "qty", "note"), attnums=(1, 3, 4))
    return RoutingTopology(tables=(orders,))


ROUTE = Shard("w2", 1, (102001,), "INSERT …")


def error(*fields: tuple[str, str]) -> bytes:
    return p.ErrorResponse((("S", "ERROR"), ("C", "23505"), *fields)).encode()


def test_errors_name_the_logical_table_and_constraint() -> None:
    names = LogicalNames(topology())
    reply = error(("M", 'duplicate key value violates unique constraint "orders_pkey_102001"'),
                  ("D", "Key (id)=(5) already exists."), ("s", "pgfleet_shards"), ("t", "orders_102001"),
                  ("n", "orders_pkey_102001")) + p.ReadyForQuery("I").encode()
    [(_, body), ready] = wire.Framer().feed(names.reported(ROUTE.shard_ids, reply))
    message = p.decode_backend(b"E", body)
    assert isinstance(message, p.ErrorResponse)
    assert message.message == 'duplicate key value violates unique constraint "orders_pkey"'
    assert (message.field("s"), message.field("t"), message.field("n")) == ("app", "orders", "orders_pkey")
    assert message.field("D") == "Key (id)=(5) already exists."
    assert ready == (b"Z", b"I")
    other = error(("M", 'relation "pgfleet_shards.orders_102000" and "x_102000"; table orders_102001'))
    out = p.decode_backend(b"E", names.reported(ROUTE.shard_ids, other)[5:])
    assert isinstance(out, p.ErrorResponse)  # only the route's shards: 102000 is not renamed
    assert out.message == 'relation "pgfleet_shards.orders_102000" and "x_102000"; table orders'


def test_row_description_needs_the_workers_oids_once() -> None:
    names = LogicalNames(topology())
    worker = p.RowDescription((p.Field("id", 17001, 1, 20, 8), p.Field("note", 17001, 3, 25), p.Field("n", 0, 0, 23, 4),
                               p.Field("typname", 1247, 2, 19, 64)))
    notice = p.NoticeResponse((("S", "NOTICE"), ("M", "hi"))).encode()
    reply = notice + worker.encode() + p.DataRow((b"1", b"x", b"2", b"t")).encode() \
        + p.CommandComplete("SELECT 1").encode() + p.ReadyForQuery("I").encode()
    assert description_at(reply) == len(notice)
    assert description_at(p.CommandComplete("UPDATE 1").encode() + p.ReadyForQuery("I").encode()) == -1
    assert names.shaped(ROUTE, reply, False) is None  # 17001 is not known yet on w2
    assert names.unknown_oids("w2", worker.payload()) == [17001]  # catalog oids are the same everywhere
    names.oids["w2"] = {17001: (16500, {1: 1, 2: 3, 3: 4})}  # what learn() reads from the worker's catalog
    out = names.shaped(ROUTE, reply, False)
    assert out is not None
    at = description_at(out)
    described = p.decode_backend(b"T", out[at + 5:at + 1 + int.from_bytes(out[at + 1:at + 5], "big")])
    assert isinstance(described, p.RowDescription)
    assert [(f.table_oid, f.column) for f in described.fields] == [(16500, 1), (16500, 4), (0, 0), (1247, 2)]
    assert out.endswith(p.DataRow((b"1", b"x", b"2", b"t")).encode() + p.CommandComplete("SELECT 1").encode()
                        + p.ReadyForQuery("I").encode())
    assert names.shaped(ROUTE, reply, False) == out  # from the cache
