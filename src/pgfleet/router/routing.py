"""Routing to workers for one router process: the current topology snapshot, how to log in to a worker,
and the per-statement decision for a session (route it, relay it, or keep the session on the
coordinator from now on because the statement may change session state the router does not carry)."""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from pglast import ast, parse_sql
from pglast.parser import ParseError

from . import planners
from .analyze import Prepared, analyze, prepare
from .ddl import adds_foreign_keys
from .keycache import KeyCache
from .normalize import Normalized, normalize
from .keyfill import KeyFill, key_fill, parsed_insert
from .rowsource import RowSource, row_source
from .refpart import CoordinatorPart, coordinator_part
from .routes import Coordinator, Route, Shard, Split
from .backend import WorkerLogin
from .copyplan import copy_is_neutral
from .snapshot import RoutingTopology
from .walk import SAFE_FUNCTIONS, children

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

DML = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt)

# Client bytes that may change roles or memberships (CREATE / ALTER / DROP ROLE, GRANT role TO role, …): the
# coordinator fires no trigger for them, so the router copies the roles to the workers itself after them
# (RouterContext.roles_changed). A false positive costs one copy of the roles.
_ROLE_WORDS = re.compile(rb'(?i)(?:(?:create|alter|drop)\s+(?:role|user|group)|grant|revoke|(?:reassign|drop)\s+owned)\b(?!")')
_ROLE_HINT_WORDS = rb"grant|revoke|role|user|group|owned"
_ROLE_HINTS = re.compile(_ROLE_HINT_WORDS)
_ANY_HINT = re.compile(_ROLE_HINT_WORDS + rb"|pgfleet|drop")  # in lower-cased bytes: _TOPOLOGY_WORDS' hints too
_ROLE_LOOK_LIMIT = 64 << 10
READY_IDLE = b"Z\x00\x00\x00\x05I"  # ReadyForQuery, outside a transaction block


# Client bytes that change which tables are distributed, and how: pgfleet's SQL API, DROP TABLE. The session
# that sent them waits for a fresh routing snapshot after them (ClientSession.from_server), so that its next
# statement — a migration's ALTER TABLE … ADD FOREIGN KEY after distribute_table — sees the change.
_TOPOLOGY_WORDS = re.compile(rb"(?i)pgfleet\s*\.\s*(?:distribute_table|reference_table|undistribute_table)\b"
                             rb"|\bdrop\s+table\b")


def may_change(data: bytes) -> tuple[bool, bool]:
    """(whether client bytes may change roles, whether they may change the distributed tables). Only a read
    that begins with a Query or a Parse and is small is looked at: not COPY data, not a bulk of rows; plain
    searches of its lower-cased bytes come first (the regular expressions cost microseconds a statement)."""
    if data[:1] not in (b"Q", b"P") or len(data) > _ROLE_LOOK_LIMIT:
        return False, False
    low = data.lower()
    if _ANY_HINT.search(low) is None:  # the usual statement: one search
        return False, False
    topology = (b"pgfleet" in low or b"drop" in low) and _TOPOLOGY_WORDS.search(data) is not None
    return _ROLE_HINTS.search(low) is not None and _role_words(data), topology


def _role_words(data: bytes) -> bool:
    """Whether the bytes hold one of the role words, standing alone (not inside an identifier or a quoted
    name), or starting a Query's text (after its length, whose last byte may be a letter)."""
    for found in _ROLE_WORDS.finditer(data):
        at = found.start()
        before = data[at - 1:at]
        if not before or not (before.isalnum() or before in (b"_", b'"')) or data[at - 5:at - 4] == b"Q":
            return True
    return False


@dataclass
class Routing:
    load_topology: Callable[[], RoutingTopology]  # reads the catalog (blocking: run it in a thread)
    login: Callable[[str], WorkerLogin]  # a worker node's current primary, as the cluster superuser
    dbname: str  # the database the distributed tables live in
    topology: RoutingTopology = field(default_factory=lambda: RoutingTopology(tables=()))
    cache: PreparedCache = field(default_factory=lambda: PreparedCache())  # noqa: PLW0108 - defined below
    # the coordinator as the cluster superuser: commit decisions of multi-worker transactions and recovery
    # (None: a transaction stays on one worker; joining a second one is refused)
    coordinator_login: Callable[[], WorkerLogin] | None = None
    # copies the coordinator's roles and privileges to the workers (Fleet.sync_roles); None: not needed
    sync_roles: Callable[[], None] | None = None
    roles_synced: str | None = None  # the roles fingerprint last copied to the workers
    keys: KeyCache = field(default_factory=KeyCache)  # keys drawn ahead from sequences (keycache.py)
    type_names: dict[int, str] = field(default_factory=dict)  # format_type of type oids met (rowsource.py)
    _refreshing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def roles_current(self) -> bool:
        """The workers have the roles of the current snapshot: sessions of any role may be routed."""
        return self.sync_roles is None or self.roles_synced == self.topology.roles_fingerprint

    def refresh(self) -> None:
        with self._refreshing:  # the periodic refresh and one after a role change may overlap
            self._refresh()

    def _refresh(self) -> None:
        try:
            fresh = self.load_topology()
            if self.sync_roles is not None and fresh.roles_fingerprint != self.roles_synced:
                try:
                    self.sync_roles()
                    fresh = self.load_topology()  # the privileges it queued changed the fingerprint
                    self.roles_synced = fresh.roles_fingerprint
                except Exception as exc:  # a worker is down: only superuser sessions are routed meanwhile
                    log.warning("could not copy roles to the workers: %s", str(exc).splitlines()[0] if str(exc) else exc)
            if fresh != self.topology:
                self.topology = fresh
                self.keys.forget_roles()
        except Exception as exc:  # the coordinator may be down or failing over: keep the last snapshot
            log.warning("could not refresh the routing topology: %s", str(exc).splitlines()[0] if str(exc) else exc)


class Decision(NamedTuple):  # made for every routed statement: a tuple is made faster than a frozen dataclass
    route: Route
    keeps_state: bool  # False: the statement may change session state; the session stays on the coordinator


def _bounded_put(entries: OrderedDict[K, V], key: K, value: V, size: int) -> None:
    """``entries[key] = value``, the oldest entry dropped when there are ``size`` already."""
    if len(entries) >= size:
        entries.popitem(last=False)
    entries[key] = value


def decide(sql: str, topology: RoutingTopology, search_path: tuple[str, ...],
           cache: PreparedCache | None = None) -> Decision:
    if cache is None:
        return _decide(sql, topology, search_path, None)
    route = cache.route(sql, topology, search_path)  # by its shape (constants made parameters)
    if isinstance(route, Shard):  # routed statements call only SAFE_FUNCTIONS, which leave no state
        return Decision(route, True)
    known = cache.decision(sql, topology, search_path)  # the same text seen before: no scan at all
    if known is None:
        known = _decide(sql, topology, search_path, cache, route)
        cache.remember(sql, search_path, known)
    return known


def _decide(sql: str, topology: RoutingTopology, search_path: tuple[str, ...],
            cache: PreparedCache | None, route: Route | None = None) -> Decision:
    """``route``: what the cache's analysis by shape gave already (None: none, or not asked)."""
    if route is None and cache is not None and (write := cache.reference_write(sql, topology, search_path)) \
            and not write.reads:
        # a write of a reference or coordinator table (known by its shape, whatever its constants): no planner
        # takes it, it calls only functions without side effects, and a router transaction runs it (refpart.py)
        name = ".".join(write.table)
        return Decision(Coordinator(f"{name} is a table of the coordinator's own" if write.local
                                    else f"writes to reference table {name} go to every copy"), True)
    if route is None:
        route = analyze(sql, topology, search_path=search_path)
    if isinstance(route, Shard):  # routed statements are single DML calling only SAFE_FUNCTIONS: neutral
        return Decision(route, True)
    if not session_neutral(sql, topology.builtin_functions):
        return Decision(Coordinator("may change session state"), False)
    if isinstance(route, Coordinator | Split) and planners.PLANNERS:  # a Split runs as a multi-shard write
        try:
            statements = parse_sql(sql)
        except ParseError:
            return Decision(route, True)
        planned = planners.plan(statements, sql, topology, search_path)
        if planned is not None:
            return Decision(planned, True)
    return Decision(route, True)


class PreparedCache:
    """Analyses of normalized statements, and decisions by exact statement text, for one topology
    snapshot (both are emptied when it changes) and search_path."""

    def __init__(self, size: int = 2048, exact_size: int = 8192) -> None:
        self.size = size
        self.exact_size = exact_size
        self._entries: OrderedDict[tuple[str, tuple[str, ...]], Prepared | Coordinator] = OrderedDict()
        # oldest first, dropped with popitem: a plain dict's first key after many deletions is found by a scan
        self._exact: OrderedDict[tuple[str, tuple[str, ...]], Decision] = OrderedDict()
        self._topology: RoutingTopology | None = None
        self._writes: OrderedDict[tuple[str, tuple[str, ...]], CoordinatorPart | None] = OrderedDict()
        self._reworks: OrderedDict[tuple[str, tuple[str, ...]], KeyFill | RowSource | None] = OrderedDict()
        # INSERT shapes (constants made parameters) that need no rework: whether one does depends on its
        # structure only, so an INSERT that differs in its constants alone is not parsed again
        self._plain_inserts: OrderedDict[tuple[str, tuple[str, ...]], None] = OrderedDict()
        self._normalized: tuple[str, Normalized | None] = ("", None)  # the last statement normalized

    def _check(self, topology: RoutingTopology) -> None:
        if topology is not self._topology:
            self._entries.clear()
            self._exact.clear()
            self._writes.clear()
            self._reworks.clear()
            self._plain_inserts.clear()
            self._topology = topology

    def decision(self, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> Decision | None:
        self._check(topology)
        return self._exact.get((sql, search_path))

    def remember(self, sql: str, search_path: tuple[str, ...], decision: Decision) -> None:
        _bounded_put(self._exact, (sql, search_path), decision, self.exact_size)

    def normalized(self, sql: str) -> Normalized | None:
        """:func:`.normalize.normalize` of ``sql``, kept for the last statement (an INSERT is normalized for its
        rework, then for its route)."""
        last, norm = self._normalized
        if last is not sql and last != sql:
            norm = normalize(sql)
            self._normalized = (sql, norm)
        return norm

    def reference_write(self, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> CoordinatorPart | None:
        """:func:`.refpart.coordinator_part` of ``sql``, kept by its text with constants made parameters (they
        do not change the answer)."""
        self._check(topology)
        norm = self.normalized(sql)
        key = (norm.text if norm is not None else sql, search_path)
        if key in self._writes:
            return self._writes[key]
        write = coordinator_part(key[0], topology, search_path)
        _bounded_put(self._writes, key, write, self.size)
        return write

    def insert_rework(self, sql: str, topology: RoutingTopology,
                      search_path: tuple[str, ...]) -> KeyFill | RowSource | None:
        """What the router does to an INSERT before routing it: keys drawn (:mod:`.keyfill`) or rows got
        first (:mod:`.rowsource`); kept by the exact text (where the edits go depends on it)."""
        if sql.lstrip()[:6].upper() != "INSERT":
            return None
        self._check(topology)
        key = (sql, search_path)
        if key in self._reworks:
            return self._reworks[key]
        norm = self.normalized(sql)
        shape = (norm.text, search_path) if norm is not None else None
        if shape is not None and shape in self._plain_inserts:
            return None
        stmt = parsed_insert(sql)
        rework = None if stmt is None else (
            key_fill(sql, topology, search_path, stmt) or row_source(sql, topology, search_path, stmt))
        if rework is None and shape is not None:
            _bounded_put(self._plain_inserts, shape, None, self.size)
        else:
            _bounded_put(self._reworks, key, rework, self.size)
        return rework

    def prepared(self, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> Prepared | Coordinator:
        """The analysis of a statement with parameters ($n) as the client wrote it (extended protocol)."""
        self._check(topology)
        key = (sql, search_path)
        prepared = self._entries.get(key)
        if prepared is None:
            prepared = prepare(sql, topology, search_path=search_path)
            self._entries[key] = prepared
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return prepared

    def route(self, sql: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> Route | None:
        """The route of ``sql`` from a cached analysis; None when it cannot be normalized."""
        self._check(topology)
        norm = self.normalized(sql)
        if norm is None or not norm.values:
            return None
        prepared = self.prepared(norm.text, topology, search_path)
        if isinstance(prepared, Coordinator):
            return None  # decided from the statement's own text (a constant may route where a parameter cannot)
        route = prepared.bind(norm.values, original=sql, position=norm.position)
        return None if isinstance(route, Coordinator) else route  # likewise (e.g. -5 is an expression on $1)


# Read-only functions that drivers and ORMs call at connect and in introspection (SQLAlchemy's
# version(), Django's table list): they change no session state, but are not SAFE_FUNCTIONS, which may
# also run on a worker (whose version and comments differ): a statement calling them goes to the coordinator.
_INFORMATIONAL_FUNCTIONS = frozenset({
    "version", "current_schema", "current_schemas", "current_database", "current_user", "session_user",
    "current_setting", "obj_description", "col_description", "pg_table_is_visible", "pg_type_is_visible",
    "format_type", "pg_get_indexdef", "pg_get_constraintdef", "pg_get_expr", "pg_get_serial_sequence",
    "pg_collation_is_visible", "pg_function_is_visible", "pg_opclass_is_visible", "pg_operator_is_visible",
    "pg_conversion_is_visible", "generate_subscripts", "pg_get_viewdef", "pg_get_triggerdef", "pg_get_ruledef", "pg_get_functiondef",
    # catalog lookups by name (psycopg's TypeInfo.fetch, e.g. SQLAlchemy's hstore lookup at connect)
    "to_regtype", "to_regclass", "to_regproc", "to_regprocedure", "to_regnamespace", "to_regrole", "to_regtypemod",
})


# Built-in functions that change the state of the session that calls them (settings, the random seed,
# session-level advisory locks, replication origins): a statement calling them keeps the session on the
# coordinator. Every other function of pg_catalog leaves no state behind a statement.
_SESSION_STATE_FUNCTIONS = frozenset({
    "set_config", "setseed", "pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
    "pg_replication_origin_session_setup", "pg_replication_origin_session_reset", "pg_replication_origin_xact_setup",
    "pg_replication_origin_xact_reset",
})


def deallocates_all(sql: str) -> bool:
    """Whether the statement is one DEALLOCATE ALL (psycopg sends it after a ROLLBACK when it has prepared
    statements): the session's prepared statements are gone, nothing else changes."""
    return sql.lstrip()[:10].upper().startswith("DEALLOCATE") and _deallocates_all(sql)  # no cache entry per statement


@functools.lru_cache(maxsize=64)
def _deallocates_all(sql: str) -> bool:
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return False
    return len(stmts) == 1 and isinstance(stmts[0].stmt, ast.DeallocateStmt) and bool(stmts[0].stmt.isall)


@functools.lru_cache(maxsize=1024)  # the extended protocol parses the same statements again and again
def session_neutral(sql: str, builtin: frozenset[str] = frozenset()) -> bool:
    """True when the statement is one SELECT/INSERT/UPDATE/DELETE calling only built-in functions that leave
    no session state (``builtin``: the names of pg_catalog's functions, from the topology snapshot; without
    it, only those the router knows): it cannot change settings, roles, temporary tables, cursors, prepared
    statements, listeners or locks that outlive it."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return True  # the coordinator reports the syntax error; nothing changes
    if len(stmts) == 1 and (isinstance(stmts[0].stmt, ast.VariableShowStmt | ast.VacuumStmt)
                            or adds_foreign_keys(stmts[0].stmt)):
        # SHOW reads a setting (SQLAlchemy's connect: SHOW transaction isolation level); VACUUM and ANALYZE
        # change no session state; nor does adding a foreign key
        return True
    if len(stmts) == 1 and stmts[0].stmt is not None and copy_is_neutral(stmts[0].stmt):
        return True  # COPY of a table from STDIN / to STDOUT
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, (*DML, ast.TruncateStmt)):  # TRUNCATE: no session state
        return False
    stack: list[object] = [stmts[0].stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple | list):
            stack.extend(node)
        elif isinstance(node, ast.Node):
            if isinstance(node, ast.FuncCall):
                name = ".".join(n.sval for n in node.funcname or ()).removeprefix("pg_catalog.")
                if name not in SAFE_FUNCTIONS and name not in _INFORMATIONAL_FUNCTIONS \
                        and (name not in builtin or name in _SESSION_STATE_FUNCTIONS):
                    return False
            if isinstance(node, ast.IntoClause):
                return False
            stack.extend(children(node))
    return True


def parse_search_path(value: str, user: str) -> tuple[str, ...]:
    """The schemas of a reported search_path (``"$user", public``), ``$user`` replaced by the user; the
    list is read by PostgreSQL's own parser, as ``SET search_path = …`` would read it."""
    if not value.strip():
        return ()
    try:
        [stmt] = parse_sql(f"SET search_path = {value}")
    except (ParseError, ValueError):
        return ()  # nothing resolves: every unqualified name goes to the coordinator
    args = stmt.stmt.args if isinstance(stmt.stmt, ast.VariableSetStmt) else None
    names = [a.val.sval for a in args or () if isinstance(a, ast.A_Const) and isinstance(a.val, ast.String)]
    return tuple(user if name == "$user" else name for name in names if name)
