"""Fast path for aggregates: count/sum/min/max/avg computed per shard on the workers in parallel and
combined here, returning what the coordinator returns for the same query."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from psycopg import sql

from ..errors import SpecError
from ..plan.tables import ident
from ..topology.model import Shard
from .fleet import Fleet
from .router import table_shards
from .shard_pool import ShardPool, pool_or_temporary

AGGREGATES = ("count", "sum", "min", "max", "avg")


def aggregate(fleet: Fleet, table: str, aggregates: Sequence[tuple[str, str | None]],
              group_by: Sequence[str] = (), where: str | None = None,
              params: Sequence[Any] | None = None, *, pool: ShardPool | None = None) -> list[tuple[Any, ...]]:
    """``SELECT group_by…, agg(col)… FROM table [WHERE …] GROUP BY group_by…``, computed per shard on the
    workers in parallel and combined here; sorted by the group columns.

    ``aggregates`` are (function, column) pairs with function in count/sum/min/max/avg (column None for
    count(*)); ``where`` is a condition on the table's columns (values as %s parameters).
    """
    dist = table_shards(fleet, table)
    if dist.method == "reference":
        raise SpecError(f"{table} is a reference table", hint="aggregate it through the coordinator")
    for fn, _col in aggregates:
        if fn not in AGGREGATES:
            raise SpecError(f"aggregate {fn!r} is not supported by the fan-out path", hint=f"use one of {AGGREGATES}")
    parts: list[sql.Composable] = [sql.Identifier(g) for g in group_by]
    for fn, col in aggregates:
        target = sql.SQL("*") if col is None else sql.Identifier(col)
        if fn == "avg":
            parts += [sql.SQL("sum({})").format(target), sql.SQL("count({})").format(target)]
        else:
            parts.append(sql.SQL("{}({})").format(sql.SQL(fn), target))

    def shard_query(shard: Shard) -> sql.Composed:
        q = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(parts), ident(shard.shard_name))
        if where:
            q = sql.SQL("{} WHERE {}").format(q, sql.SQL(where))  # the caller's condition, values as params
        if group_by:
            q = sql.SQL("{} GROUP BY {}").format(q, sql.SQL(", ").join(sql.Identifier(g) for g in group_by))
        return q

    with pool_or_temporary(fleet, pool) as shard_pool:

        def run(shard: Shard) -> list[tuple[Any, ...]]:
            with shard_pool.conn(shard.node) as conn:
                return conn.execute(shard_query(shard), params).fetchall()

        with ThreadPoolExecutor(max_workers=min(len(dist.shards), 16)) as threads:
            results = list(threads.map(run, dist.shards))
    return _combine(results, len(group_by), aggregates)


def _combine(results: list[list[tuple[Any, ...]]], ngroup: int,
             aggregates: Sequence[tuple[str, str | None]]) -> list[tuple[Any, ...]]:
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for rows in results:
        for row in rows:
            key = tuple(row[:ngroup])
            vals = list(row[ngroup:])
            acc = groups.get(key)
            if acc is None:
                groups[key] = vals
                continue
            i = 0
            for fn, _col in aggregates:
                if fn in ("count", "sum"):
                    acc[i] = _add(acc[i], vals[i])
                elif fn == "min":
                    acc[i] = vals[i] if acc[i] is None else (acc[i] if vals[i] is None else min(acc[i], vals[i]))
                elif fn == "max":
                    acc[i] = vals[i] if acc[i] is None else (acc[i] if vals[i] is None else max(acc[i], vals[i]))
                elif fn == "avg":
                    acc[i] = _add(acc[i], vals[i])
                    acc[i + 1] = _add(acc[i + 1], vals[i + 1])
                    i += 1
                i += 1
    out = []
    for key, vals in groups.items():
        combined: list[Any] = list(key)
        i = 0
        for fn, _col in aggregates:
            if fn == "avg":
                total, count = vals[i], vals[i + 1]
                combined.append(None if not count else _avg(total, count))
                i += 2
            else:
                combined.append(vals[i])
                i += 1
        out.append(tuple(combined))
    if ngroup == 0 and not out:
        out.append(tuple(0 if fn == "count" else None for fn, _c in aggregates))
    return sorted(out, key=lambda r: tuple((x is None, x) for x in r[:ngroup]))


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _avg(total: Any, count: int) -> Any:
    from decimal import Decimal

    if isinstance(total, Decimal):
        return total / Decimal(count)
    return Decimal(total) / Decimal(count)
