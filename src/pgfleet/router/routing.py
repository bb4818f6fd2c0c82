"""Routing to workers for one router process: the current topology snapshot, how to log in to a worker,
and the per-statement decision for a session (route it, relay it, or keep the session on the
coordinator from now on because the statement may change session state the router does not carry)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pglast import ast, parse_sql
from pglast.parser import ParseError

from .analyze import Coordinator, Route, analyze
from .backend import WorkerLogin
from .snapshot import RoutingTopology
from .walk import SAFE_FUNCTIONS, children

log = logging.getLogger(__name__)

DML = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)


@dataclass
class Routing:
    load_topology: Callable[[], RoutingTopology]  # reads the catalog (blocking: run it in a thread)
    login: Callable[[str], WorkerLogin]  # a worker node's current primary, as the cluster superuser
    dbname: str  # the database the distributed tables live in
    topology: RoutingTopology = field(default_factory=lambda: RoutingTopology(tables=()))

    def refresh(self) -> None:
        try:
            self.topology = self.load_topology()
        except Exception as exc:  # the coordinator may be down or failing over: keep the last snapshot
            log.warning("could not refresh the routing topology: %s", str(exc).splitlines()[0] if str(exc) else exc)


@dataclass(frozen=True)
class Decision:
    route: Route
    keeps_state: bool  # False: the statement may change session state; the session stays on the coordinator


def decide(sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> Decision:
    neutral = session_neutral(sql)
    if not neutral:
        return Decision(Coordinator("may change session state"), False)
    return Decision(analyze(sql, topology, search_path=search_path), True)


@functools.lru_cache(maxsize=1024)
def session_neutral(sql: str) -> bool:
    """True when the statement is one SELECT/INSERT/UPDATE/DELETE calling only built-in functions without
    side effects: it cannot change settings, roles, temporary tables, cursors, prepared statements,
    listeners or locks that outlive it."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return True  # the coordinator reports the syntax error; nothing changes
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, DML):
        return False
    stack: list[object] = [stmts[0].stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            if isinstance(node, ast.FuncCall):
                name = ".".join(n.sval for n in node.funcname or ())
                if name.removeprefix("pg_catalog.") not in SAFE_FUNCTIONS:
                    return False
            if isinstance(node, ast.IntoClause):
                return False
            stack.extend(children(node))
    return True


def parse_search_path(value: str, user: str) -> tuple[str, ...]:
    """The schemas of a reported search_path (``"$user", public``), ``$user`` replaced by the user."""
    schemas: list[str] = []
    for raw in _split_identifiers(value):
        name = user if raw == "$user" else raw
        schemas.append(name)
    return tuple(schemas)


def _split_identifiers(value: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t\n,":
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j, buf = i + 1, []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(value[j])
                j += 1
            out.append("".join(buf))
            i = j + 1
        else:
            j = i
            while j < n and value[j] not in ",":
                j += 1
            out.append(value[i:j].strip().lower())
            i = j
    return out


