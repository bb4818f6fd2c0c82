"""Planning code, tested on the SQL it produces (no server)."""

import pytest
from psycopg import sql

from pgfleet.errors import SpecError
from pgfleet.plan import render
from pgfleet.plan.layout import check_key, check_reference, check_table_shape, layout_shards
from pgfleet.plan.tables import (
    foreign_partition_ddl,
    hash_remainder_expr,
    parent_table_ddl,
    partition_bound,
    shard_rule,
    shard_table_ddl,
)
from pgfleet.spec import DistributeSpec, HashSpec, ListShard, ListSpec, QualifiedName, RangeShard, RangeSpec
from pgfleet.topology.model import Column, Constraint, Index, Shard, TableDef

PRODUCTS = TableDef(
    oid=42, name=QualifiedName("public", "products"), relkind="r", owner="app",
    columns=(
        Column(1, "id", "bigint", "pg_catalog", True, "nextval('products_id_seq'::regclass)", None),
        Column(2, "name", "text", "pg_catalog", True, None, None),
        Column(3, "price", "numeric", "pg_catalog", False, "0", None),
    ),
    constraints=(Constraint("products_pkey", "p", "PRIMARY KEY (id)", ("id",)),
                 Constraint("products_price_check", "c", "CHECK ((price >= (0)::numeric))", ("price",))),
    indexes=(Index("products_pkey", "", True, True, "USING btree (id)"),
             Index("products_name_idx", "", False, False, "USING btree (name)")),
)


def test_hash_rule_uses_bigint_arithmetic_only() -> None:
    expr = render(hash_remainder_expr(sql.Identifier("id"), "hashint8extended", 7))
    h = '"hashint8extended"("id", 8816678312871386365)'
    low = f"(({h} & 4294967295) + 367372515)"
    assert expr == (f"((((((({h} >> 32) & 4294967295) + 1235285213 + ({low} >> 32)) & 4294967295) % 7) * 4 "
                    f"+ ({low} & 4294967295)) % 7)")
    assert "numeric" not in expr
    # a power of two divides 2^64: the low bits of hash and constant are enough
    assert render(hash_remainder_expr(sql.Identifier("id"), "hashint8extended", 8)) == f"((({h} & 7) + 3) & 7)"


def test_shard_table_carries_columns_constraints_indexes_and_rule() -> None:
    shard = Shard(102001, 42, 1, "w1", "public", "products_102001", "pgfleet_shards", "products_102001",
                  modulus=8, remainder=1)
    stmts = [render(s) for s in shard_table_ddl(PRODUCTS, shard.shard_name,
                                                rule=shard_rule("id", shard, "hashint8extended"),
                                                shard_id=102001)]
    assert stmts[0] == 'CREATE SCHEMA IF NOT EXISTS "public"'
    create = stmts[1]
    assert create.startswith('CREATE TABLE "public"."products_102001" ("id" bigint NOT NULL, "name" text NOT NULL, '
                             '"price" numeric DEFAULT 0, ')
    assert "nextval" not in create  # the coordinator's sequence hands out ids
    assert 'CONSTRAINT "products_price_check" CHECK ((price >= (0)::numeric))' in create
    assert ('CONSTRAINT "pgfleet: distribution key cannot move to another shard" '
            'CHECK (((("hashint8extended"("id", 8816678312871386365) & 7) + 3) & 7) = 1)') in create
    assert create.endswith('CONSTRAINT "products_pkey_102001" PRIMARY KEY (id))')
    assert stmts[2] == """COMMENT ON TABLE "public"."products_102001" IS 'pgfleet shard 102001'"""
    assert stmts[3] == 'CREATE INDEX "products_name_idx_102001" ON "public"."products_102001" USING btree (name)'


def test_parent_and_foreign_partition() -> None:
    parent = render(parent_table_ddl(PRODUCTS, QualifiedName("public", "stage"), "hash", "id"))
    assert parent == ('CREATE TABLE "public"."stage" ("id" bigint DEFAULT nextval(\'products_id_seq\'::regclass) NOT NULL, '
                      '"name" text NOT NULL, "price" numeric DEFAULT 0, '
                      'CONSTRAINT "products_price_check" CHECK ((price >= (0)::numeric))) PARTITION BY HASH ("id")')
    shard = Shard(7, 42, 3, "w2", "public", "products_7", "pgfleet_shards", "products_7", modulus=4, remainder=3)
    assert render(foreign_partition_ddl(QualifiedName("public", "stage"), shard, "pgfleet_w2")) == (
        'CREATE FOREIGN TABLE "pgfleet_shards"."products_7" PARTITION OF "public"."stage" '
        'FOR VALUES WITH (MODULUS 4, REMAINDER 3) SERVER "pgfleet_w2" '
        "OPTIONS (schema_name 'public', table_name 'products_7')")


def test_range_and_list_bounds_and_rules() -> None:
    r = Shard(1, 1, 0, "w1", "s", "t_1", "f", "t_1", lower=None, upper="250000")
    assert render(partition_bound(r)) == "FOR VALUES FROM (MINVALUE) TO ('250000')"
    assert render(shard_rule("aid", r, None)) == "\"aid\" < '250000'"
    r2 = Shard(2, 1, 1, "w1", "s", "t_2", "f", "t_2", lower="250000", upper="500000")
    assert render(shard_rule("aid", r2, None)) == "\"aid\" >= '250000' AND \"aid\" < '500000'"
    lst = Shard(3, 1, 0, "w1", "s", "t_3", "f", "t_3", values=("paris", "o'hare"))
    assert render(partition_bound(lst)) == "FOR VALUES IN ('paris', 'o''hare')"
    assert render(shard_rule("location", lst, None)) == "\"location\" IN ('paris', 'o''hare')"


def test_layout_round_robin_and_sites() -> None:
    shards = layout_shards(PRODUCTS, DistributeSpec(PRODUCTS.name, "id", HashSpec(4)), ["w1", "w2"], [10, 11, 12, 13])
    assert [(s.node, s.remainder, s.shard_table) for s in shards] == [
        ("w1", 0, "products_10"), ("w2", 1, "products_11"), ("w1", 2, "products_12"), ("w2", 3, "products_13")]
    sites = layout_shards(PRODUCTS, DistributeSpec(PRODUCTS.name, "name", ListSpec((
        ListShard(("paris",), "w2"), ListShard(("lagos",), "w1")))), ["w1", "w2"], [1, 2])
    assert [(s.values, s.node) for s in sites] == [(("paris",), "w2"), (("lagos",), "w1")]
    with pytest.raises(SpecError, match="unknown node 'w9'"):
        layout_shards(PRODUCTS, DistributeSpec(PRODUCTS.name, "id", RangeSpec((RangeShard("0", "5", "w9"),))),
                      ["w1"], [1])


def test_colocated_layout_copies_bounds_and_nodes() -> None:
    from pgfleet.topology.model import DistTable

    other = DistTable(1, QualifiedName("public", "o"), "hash", "id", 1, shards=(
        Shard(5, 1, 0, "w2", "public", "o_5", "f", "o_5", modulus=2, remainder=0),
        Shard(6, 1, 1, "w1", "public", "o_6", "f", "o_6", modulus=2, remainder=1)))
    shards = layout_shards(PRODUCTS, DistributeSpec(PRODUCTS.name, "id", colocate_with=other.name),
                           ["w1", "w2"], [20, 21], colocated=other)
    assert [(s.node, s.remainder) for s in shards] == [("w2", 0), ("w1", 1)]


def test_unique_constraint_without_key_is_refused_with_reason() -> None:
    with pytest.raises(SpecError, match="does not include the distribution key name"):
        check_key(PRODUCTS, "name")
    with pytest.raises(SpecError, match="column 'nope' does not exist"):
        check_key(PRODUCTS, "nope")
    assert check_key(PRODUCTS, "id").name == "id"


def test_shape_checks() -> None:
    from dataclasses import replace

    # its own foreign keys are the catalog's to judge (pgfleet.check_foreign_key); one that references it
    # is refused for a distributed table, and fine for a reference table (a plain table on the coordinator)
    check_table_shape(replace(PRODUCTS, constraints=(Constraint("fk", "f", "FOREIGN KEY (x) REFERENCES y(id)"),)),
                      reference=False)
    with pytest.raises(SpecError, match=r"foreign key public\.c\.fk references"):
        check_table_shape(replace(PRODUCTS, referencing_fks=("public.c.fk",)), reference=False)
    check_table_shape(replace(PRODUCTS, referencing_fks=("public.c.fk",)), reference=True)
    # a type of the coordinator's own (an enum) goes to the workers with the shards (sql/types.sql)
    check_table_shape(replace(PRODUCTS, columns=(Column(1, "mood", "mood", "public", False, None, None),)),
                      reference=False)
    with pytest.raises(SpecError, match="needs a primary key"):
        check_reference(replace(PRODUCTS, constraints=()))
