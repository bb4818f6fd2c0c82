"""VACUUM and ANALYZE of distributed and reference tables, as statements per node (pure).

On the coordinator, ``VACUUM t`` of a distributed table only warns once per foreign partition ("skipping
… cannot vacuum non-tables"): the rows live in the shard tables. So a distributed table is vacuumed
shard by shard on the workers, and analyzed there first, then on the coordinator (whose ANALYZE of the
parent samples the shards and takes their row counts from the workers' statistics). A reference table
is a plain table on the coordinator, vacuumed there too, and each copy on its worker. VACUUM cannot run
inside a transaction block or a function, so this is for clients (the CLI, the API, later the router),
not for SQL functions.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..errors import SpecError
from ..topology.model import DistTable

# VACUUM / ANALYZE options (PostgreSQL 16–18) and whether they take a value. Anything else is refused.
OPTIONS: dict[str, bool] = {
    "full": False, "freeze": False, "verbose": False, "analyze": False, "disable_page_skipping": False,
    "skip_locked": False, "index_cleanup": True, "process_main": False, "process_toast": False,
    "truncate": False, "parallel": True, "skip_database_stats": False, "only_database_stats": False,
    "buffer_usage_limit": True,
}
ANALYZE_OPTIONS = frozenset({"verbose", "skip_locked", "buffer_usage_limit"})


@dataclass(frozen=True)
class Maintenance:
    """``VACUUM (options)`` (vacuum=True) or ``ANALYZE (options)``; option values as text (None: no value)."""

    vacuum: bool = True
    options: tuple[tuple[str, str | None], ...] = ()

    def __post_init__(self) -> None:
        allowed = OPTIONS if self.vacuum else {k: v for k, v in OPTIONS.items() if k in ANALYZE_OPTIONS}
        for name, value in self.options:
            if name not in allowed:
                raise SpecError(f"{'VACUUM' if self.vacuum else 'ANALYZE'} option {name!r} is not known here",
                                hint=f"use one of {', '.join(sorted(allowed))}")
            if value is not None and not allowed[name] and value.lower() not in ("true", "false", "on", "off", "1", "0"):
                raise SpecError(f"option {name} takes true or false, not {value!r}")

    @property
    def analyzes(self) -> bool:
        """The statement gathers statistics (ANALYZE, or VACUUM with the ANALYZE option switched on)."""
        if not self.vacuum:
            return True
        return any(name == "analyze" and (value is None or value.lower() in ("true", "on", "1"))
                   for name, value in self.options)

    @property
    def only_analyze(self) -> Maintenance:
        """The same options as an ANALYZE (for the coordinator's parent after a VACUUM ANALYZE of its shards)."""
        return Maintenance(vacuum=False, options=tuple((n, v) for n, v in self.options if n in ANALYZE_OPTIONS))

    def render(self, table: sql.Composable, columns: tuple[str, ...] = ()) -> sql.Composed:
        parts: list[sql.Composable] = [sql.SQL("VACUUM" if self.vacuum else "ANALYZE")]
        if self.options:
            parts.append(sql.SQL("({})").format(sql.SQL(", ").join(
                sql.SQL(name.upper()) if value is None else sql.SQL("{} {}").format(sql.SQL(name.upper()), sql.Literal(value))
                for name, value in self.options)))
        parts.append(table)
        if columns:
            parts.append(sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns)))
        return sql.SQL(" ").join(parts)


@dataclass(frozen=True)
class MaintenancePlan:
    """What to run: statements per worker (each worker's in order), then on the coordinator."""

    workers: tuple[tuple[str, sql.Composed], ...]
    coordinator: tuple[sql.Composed, ...]


def plan_maintenance(command: Maintenance, tables: tuple[tuple[DistTable, tuple[str, ...]], ...]) -> MaintenancePlan:
    """Statements for ``command`` on each (table, columns): every shard or copy on its worker; on the
    coordinator, a reference table itself and, when statistics are gathered, a distributed table's parent."""
    workers: list[tuple[str, sql.Composed]] = []
    coordinator: list[sql.Composed] = []
    for table, columns in tables:
        for shard in table.shards:
            workers.append((shard.node, command.render(sql.Identifier(shard.shard_schema, shard.shard_table), columns)))
        name = sql.Identifier(table.name.schema or "public", table.name.name)
        if table.method == "reference":
            coordinator.append(command.render(name, columns))
        elif command.analyzes:
            coordinator.append(command.only_analyze.render(name, columns))
    return MaintenancePlan(tuple(workers), tuple(coordinator))
