"""Range bounds and list values checked with the key's own type on the coordinator, before any shard exists.

PostgreSQL would refuse unsorted, overlapping or duplicate bounds only when the partitions are attached,
after the shard tables were created on the workers; a bound that is no value of the key's type would fail
on the first worker. Here every bound is cast to the key's type (with its collation) and ranked by it, and
the pure checks in spec/ decide.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..errors import SpecError
from ..execute.connect import Conn
from ..spec import ListSpec, RangeSpec
from ..spec.distribution import check_list_distinct, check_range_order
from ..topology.model import Column


def _cast(value: str, key: Column) -> sql.Composed:
    collate = sql.SQL(" COLLATE " + key.collation) if key.collation else sql.SQL("")
    # key.type is format_type() output from the coordinator's catalog: server-produced SQL.
    return sql.SQL("CAST({} AS {}){}").format(sql.Literal(value), sql.SQL(key.type), collate)


def _invalid(conn: Conn, key: Column, values: list[str]) -> str | None:
    """The first value that is no value of the key's type, and PostgreSQL's reason."""
    for value in values:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT {}").format(_cast(value, key)))
        except psycopg.Error as exc:
            return f"{value!r} is not a value of the key {key.name} ({key.type}): {exc.diag.message_primary}"
    return None


def value_ranks(conn: Conn, key: Column, values: list[str]) -> dict[str, int]:
    """Each distinct text in ``values`` → its rank in the key type's order (equal values, equal rank)."""
    distinct = list(dict.fromkeys(values))
    if not distinct:
        return {}
    rows = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(i), _cast(v, key)) for i, v in enumerate(distinct))
    query = sql.SQL("SELECT i, dense_rank() OVER (ORDER BY v) FROM (VALUES {}) AS b(i, v)").format(rows)
    try:
        with conn.transaction():
            found = conn.execute(query).fetchall()
    except psycopg.Error as exc:
        reason = _invalid(conn, key, distinct) or exc.diag.message_primary or str(exc)
        raise SpecError(reason, hint=f"give bounds and list values as {key.type} literals") from None
    return {distinct[int(str(i))]: int(str(r)) for i, r in found}


def check_bounds(conn: Conn, key: Column, method: RangeSpec | ListSpec) -> None:
    """SpecError naming the offending bounds or values; reads only."""
    if isinstance(method, RangeSpec):
        finite = [b for s in method.shards for b in (s.lower, s.upper) if b is not None]
        check_range_order(method.shards, value_ranks(conn, key, finite))
    else:
        check_list_distinct(method.shards, value_ranks(conn, key, [v for s in method.shards for v in s.values]))
