"""The planners of statements the router runs itself over several shards (:mod:`.multishard`), in the
order they are tried: the first plan wins. A planner module imports :mod:`.multishard`; this module
imports the planners, and routing imports this module."""

from __future__ import annotations

from collections.abc import Sequence

from pglast import ast

from .copyplan import plan_copy
from .insertstream import plan_insert_stream
from .multishard import Planner
from .mwrite import plan_write
from .routes import MultiShard
from .scatter import plan_scatter
from .snapshot import RoutingTopology
from .vacuum import planner as vacuum_planner

PLANNERS: list[Planner] = [  # tried in order; the first plan wins (each planner adds one line here)
    vacuum_planner,
    plan_write,
    plan_insert_stream,
    plan_copy,
    plan_scatter,
]


def plan(statements: Sequence[ast.RawStmt], sql: str, topology: RoutingTopology,
         search_path: tuple[str, ...]) -> MultiShard | None:
    """A plan for a single statement that some planner can run, else None."""
    if len(statements) != 1 or not topology.tables:
        return None
    stmt = statements[0].stmt
    if stmt is None:
        return None
    for planner in PLANNERS:
        found = planner(stmt, sql, topology, search_path)
        if found is not None:
            return found
    return None
