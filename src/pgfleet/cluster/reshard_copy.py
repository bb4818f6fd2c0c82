"""The new shards of a reshard: their tables on the workers, their rows from the old shards, the check.

* A new shard carries what distribution gives a shard: the columns, NOT NULL, CHECKs and non-sequence
  defaults of the coordinator's parent, its own partition rule, and the primary key, unique constraints
  and indexes that the table's first old shard has (those added after distribution too), renamed for the
  new shard id; foreign keys come after the rows (:func:`foreign_key_ddl`), pointing at the reference copy
  on the same worker or at the co-located table's new shard of the same index.
* Rows go worker to worker: ``COPY (SELECT … WHERE <new rule>) TO STDOUT`` on the old shard's worker,
  streamed chunk by chunk into ``COPY … FROM STDIN`` on the new shard's worker, so no process holds a
  table. The filter is the new shard's own CHECK (:func:`plan.tables.hash_remainder_expr`). A row of old
  shard (M, r) can only belong to a new shard (N, r') with r ≡ r' (mod gcd(M, N)): both remainders come
  from one 64-bit hash, so only those pairs are read (8 → 4 reads each old shard once).
* Count and checksum of every column (generated ones included: the new shards compute them again) are
  summed per table on both sides, under canonical settings, and must agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from math import gcd

from psycopg import sql

from ..execute.connect import Conn
from ..plan import tables
from ..topology.model import Shard, TableDef

SUMS = "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM (SELECT {cols} FROM {src}) t"

# The primary key and unique constraints (p, u) and the indexes that back no constraint, of one shard.
SHARD_KEYS = """
SELECT c.conname::text, pg_get_constraintdef(c.oid), NULL, false FROM pg_constraint c
WHERE c.conrelid = %(t)s::regclass AND c.contype IN ('p', 'u')
UNION ALL
SELECT ic.relname::text, NULL, substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$'), i.indisunique
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %(t)s::regclass AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)
ORDER BY 1
"""

FK_ACTIONS = frozenset({"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"})
FK_DEFERRALS = frozenset({"NOT DEFERRABLE", "DEFERRABLE INITIALLY IMMEDIATE", "DEFERRABLE INITIALLY DEFERRED"})


@dataclass(frozen=True)
class ShardKey:
    """A primary key, unique constraint or index of a shard, named as on the coordinator."""

    name: str
    constraint: str | None  # pg_get_constraintdef, or None for an index
    tail: str | None  # "USING …" of an index
    unique: bool


@dataclass(frozen=True)
class ForeignKey:
    """A pgfleet.foreign_keys row of a resharded table."""

    name: str
    columns: tuple[str, ...]
    ref_relid: int
    ref_columns: tuple[str, ...]
    on_delete: str
    on_update: str
    deferral: str


def original_name(shard_name: str, shard_id: int) -> str:
    """The name a shard object had before ``shard_object_name`` gave it the shard id (a name cut and
    md5-tagged to fit keeps its tag: with an id of the same length it gets the same name back)."""
    suffix = f"_{shard_id}"
    return shard_name[: -len(suffix)] if shard_name.endswith(suffix) else shard_name


def shard_keys(conn: Conn, shard: Shard) -> list[ShardKey]:
    rows = conn.execute(SHARD_KEYS, {"t": tables.ident(shard.shard_name).as_string(conn)}).fetchall()
    return [ShardKey(original_name(str(r[0]), shard.shard_id), None if r[1] is None else str(r[1]),
                     None if r[2] is None else str(r[2]), bool(r[3])) for r in rows]


def foreign_keys(conn: Conn, relid: int) -> list[ForeignKey]:
    rows = conn.execute("SELECT name, columns, ref_relid, ref_columns, on_delete, on_update, deferral "
                        "FROM pgfleet.foreign_keys WHERE relid = %s ORDER BY name", (relid,)).fetchall()
    return [ForeignKey(str(r[0]), tuple(r[1]), int(str(r[2])), tuple(r[3]), str(r[4]), str(r[5]), str(r[6]))
            for r in rows]


def new_shard_ddl(parent: TableDef, key: str, hash_function: str, keys: Sequence[ShardKey],
                  shard: Shard) -> list[sql.Composed]:
    """The statements that create ``shard`` on its worker (see the module's docstring)."""
    plain = replace(parent, constraints=tuple(tables.check_constraints(parent)), indexes=())
    statements = tables.shard_table_ddl(plain, shard.shard_name, rule=tables.shard_rule(key, shard, hash_function),
                                        shard_id=shard.shard_id)
    target = tables.ident(shard.shard_name)
    for k in keys:
        name = sql.Identifier(tables.shard_object_name(k.name, shard.shard_id))
        if k.constraint is not None:
            statements.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(target, name, sql.SQL(k.constraint)))
        else:
            statements.append(sql.SQL("CREATE {}INDEX {} ON {} {}").format(
                sql.SQL("UNIQUE " if k.unique else ""), name, target, sql.SQL((k.tail or "").strip())))
    return statements


def foreign_key_ddl(fk: ForeignKey, shard: Shard, target: Shard) -> sql.Composed:
    """``fk`` on new shard ``shard``, referencing ``target`` (a reference copy on the same worker or the
    co-located new shard of the same index)."""
    if fk.on_delete not in FK_ACTIONS or fk.on_update not in FK_ACTIONS or fk.deferral not in FK_DEFERRALS:
        raise ValueError(f"foreign key {fk.name} has an unknown action or deferral")
    return sql.SQL("ALTER TABLE {t} ADD CONSTRAINT {n} FOREIGN KEY ({c}) REFERENCES {r} ({rc}) "
                   "ON DELETE {d} ON UPDATE {u} {df}").format(
        t=tables.ident(shard.shard_name), n=sql.Identifier(tables.shard_object_name(fk.name, shard.shard_id)),
        c=sql.SQL(", ").join(map(sql.Identifier, fk.columns)), r=tables.ident(target.shard_name),
        rc=sql.SQL(", ").join(map(sql.Identifier, fk.ref_columns)),
        d=sql.SQL(fk.on_delete), u=sql.SQL(fk.on_update), df=sql.SQL(fk.deferral))


def pairs(old: Sequence[Shard], new: Sequence[Shard]) -> list[tuple[Shard, Shard]]:
    """The (old shard, new shard) pairs that can share rows, in old shard order."""
    result = []
    for o in sorted(old, key=lambda s: s.index):
        for n in sorted(new, key=lambda s: s.index):
            assert o.modulus and n.modulus and o.remainder is not None and n.remainder is not None
            g = gcd(o.modulus, n.modulus)
            if o.remainder % g == n.remainder % g:
                result.append((o, n))
    return result


def new_rule_filter(key: str, hash_function: str, shard: Shard) -> sql.Composed:
    """The rows of ``shard``: its CHECK, and NULL keys in remainder 0, where PostgreSQL's hash
    partitioning puts them."""
    assert shard.modulus is not None and shard.remainder is not None
    rule = sql.SQL("{} = {}").format(tables.hash_remainder_expr(sql.Identifier(key), hash_function, shard.modulus),
                                     sql.Literal(shard.remainder))
    if shard.remainder == 0:
        return sql.SQL("({} OR {} IS NULL)").format(rule, sql.Identifier(key))
    return rule


def copy_pair(source: Conn, target: Conn, old: Shard, new: Shard, columns: sql.Composable,
              row_filter: sql.Composable) -> int:
    """Stream the rows of ``old`` that ``row_filter`` keeps into ``new`` (one COPY each way); return how many."""
    out = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT").format(columns, tables.ident(old.shard_name),
                                                                       row_filter)
    into = sql.SQL("COPY {} ({}) FROM STDIN").format(tables.ident(new.shard_name), columns)
    cursor = target.cursor()
    with source.cursor().copy(out) as src, cursor.copy(into) as dst:
        for chunk in src:
            dst.write(chunk)
    return max(cursor.rowcount, 0)


def sums(conns: Mapping[str, Conn], shards: Sequence[Shard], columns: sql.Composable,
         each: Callable[[], None] | None = None) -> tuple[int, int]:
    """Count and checksum of ``shards`` together (connections with canonical settings, by node)."""
    count, checksum = 0, 0
    for shard in shards:
        row = conns[shard.node].execute(sql.SQL(SUMS).format(cols=columns, src=tables.ident(shard.shard_name))).fetchone()
        if row is not None:
            count += int(str(row[0]))
            checksum += int(str(row[1]))
        if each is not None:
            each()
    return count, checksum
