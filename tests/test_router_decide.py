"""The router's per-statement decision: statements that differ only in constants share one cached
analysis, and the cached route is exactly the route of the statement analyzed on its own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pglast import parse_sql
from test_router_analyze import NOT_ROUTED, ROUTED, TOPOLOGY

from pgfleet.router import planners
from pgfleet.router.analyze import Coordinator, Shard, Split, analyze
from pgfleet.router import protocol as p
from pgfleet.router.normalize import _constants_by_expression, _constants_by_scanner
from pgfleet.router.routes import MultiShard
from pgfleet.router.settings import SettingChange, setting_change, settle
from pgfleet.router.snapshot import RoutingTopology
from pgfleet.router.routing import PreparedCache, decide, normalize, parse_search_path, session_neutral

STATEMENTS = [sql for sql, params, *_ in ROUTED + NOT_ROUTED if not params] + [
    "SELECT 'it''s', amount FROM orders WHERE id = 5",
    "SELECT E'x\\ny', amount FROM orders WHERE id = 5",
    "SELECT $$dollar$$, amount FROM orders WHERE id = 5",
    "SELECT 'a' 'b' FROM orders WHERE id = 5",
    "SELECT 12345678901234567890 AS big, amount FROM orders WHERE id = 5",
    "SELECT * FROM orders WHERE id = -5",
    "SELECT * FROM orders WHERE id = 5 ORDER BY 1 LIMIT 2",
    "SELECT interval '1 day', amount FROM orders WHERE id = 5",
    "SELECT * FROM sites WHERE city = 'Lagos' AND name = 'x'",
    "INSERT INTO orders (id, note) VALUES (5, 'five') RETURNING id",
]


@pytest.mark.parametrize("sql", STATEMENTS)
def test_cached_route_equals_direct_analysis(sql: str) -> None:
    cache = PreparedCache()
    direct = analyze(sql, TOPOLOGY, search_path=("public",))
    for _ in range(2):  # a miss, then a hit
        decision = decide(sql, TOPOLOGY, ("public",), cache)
        if isinstance(decision.route, MultiShard):  # a planner runs what the analysis left to the coordinator
            assert isinstance(direct, Coordinator | Split)
            assert decision.route == planners.plan(parse_sql(sql), sql, TOPOLOGY, ("public",))
        elif decision.keeps_state:
            assert decision.route == direct
        else:  # kept on the coordinator for its session effects, whatever the analysis said
            assert isinstance(decision.route, Coordinator) and isinstance(direct, Coordinator)


def test_statements_differing_in_constants_share_one_analysis() -> None:
    cache = PreparedCache()
    for key in range(1, 50):
        sql = f"SELECT 'label {key}' AS l, amount FROM orders WHERE id = {key}"
        route = decide(sql, TOPOLOGY, ("public",), cache).route
        assert isinstance(route, Shard)
        assert route == analyze(sql, TOPOLOGY, search_path=("public",))
    assert len(cache._entries) == 1


def test_normalize() -> None:
    norm = normalize("SELECT 'a''b', x FROM t WHERE k = 42 AND f = 1.5")
    assert norm is not None
    assert (norm.text, norm.values) == ("SELECT $1, x FROM t WHERE k = $2 AND f = $3", ("a'b", "42", "1.5"))
    assert norm.position(norm.text.index("t WHERE")) == "SELECT 'a''b', x FROM t WHERE k = 42 AND f = 1.5".index("t WHERE")
    assert normalize("SELECT E'x' FROM t") is None
    assert normalize("SELECT $1") is None


def test_session_state_and_search_path() -> None:
    assert session_neutral("SELECT * FROM orders WHERE id = 1")
    for sql in ("SET search_path = x", "BEGIN", "SELECT set_config('a.b', 'c', false)", "LISTEN x",
                "CREATE TEMP TABLE x (i int)", "PREPARE p AS SELECT 1", "SELECT pg_advisory_lock(1)",
                "SELECT * INTO x FROM orders", "DECLARE c CURSOR FOR SELECT 1", "SELECT 1; SELECT 2"):
        assert not session_neutral(sql), sql
        assert decide(sql, TOPOLOGY, ("public",)).keeps_state is False
    # SQLAlchemy's connect, Django's table list: read-only, to the coordinator, the session stays routable
    for sql in ("select pg_catalog.version()", "SELECT current_schema()", "show transaction isolation level",
                "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c WHERE pg_table_is_visible(c.oid)"):
        decision = decide(sql, TOPOLOGY, ("public",))
        assert decision.keeps_state and isinstance(decision.route, Coordinator), sql
    assert decide("SELECT obj_description(1::oid) FROM orders WHERE id = 1", TOPOLOGY, ("public",)).route == \
        Coordinator("function obj_description may have side effects or read other tables")  # not on a worker
    assert decide("SELECT 1/0", TOPOLOGY, ("public",)) .route == Coordinator("no distributed table")
    assert parse_search_path('"$user", public, "My Schema", Other', "alice") == ("alice", "public", "My Schema", "other")


def test_the_same_text_is_decided_once_per_topology() -> None:
    cache = PreparedCache(exact_size=2)
    sql = "SELECT * FROM orders WHERE id > 5"  # not single-shard: analyzed from its own text, kept by it
    first = decide(sql, TOPOLOGY, ("public",), cache)
    assert decide(sql, TOPOLOGY, ("public",), cache) is first  # by exact text: no scan, no bind
    assert decide(sql, TOPOLOGY, ("other", "public"), cache) is not first  # another search_path: its own entry
    decide("SELECT * FROM orders WHERE id > 6", TOPOLOGY, ("public",), cache)  # evicts the oldest
    assert decide(sql, TOPOLOGY, ("public",), cache) is not first and decide(sql, TOPOLOGY, ("public",), cache) == first
    moved = RoutingTopology(tables=TOPOLOGY.tables[:1])  # a new snapshot: decisions are made again
    assert decide(sql, moved, ("public",), cache) is not first
    routed = "SELECT * FROM orders WHERE id = 5"  # routed by its shape (constants made parameters): not kept
    assert isinstance(decide(routed, TOPOLOGY, ("public",), cache).route, Shard)
    assert decide(routed, TOPOLOGY, ("public",), cache) == decide(routed, TOPOLOGY, ("public",), cache)
    assert cache.decision(routed, TOPOLOGY, ("public",)) is None


def test_built_in_functions_leave_the_session_routable() -> None:
    """With the names of pg_catalog's functions (the topology snapshot reads them), a statement that calls only
    built-in functions keeps the session routable, unless a function changes the session's state."""
    builtin = frozenset({"gen_random_uuid", "random", "clock_timestamp", "set_config", "setseed", "pg_advisory_lock"})
    topology = RoutingTopology(tables=TOPOLOGY.tables, builtin_functions=builtin)
    for sql in ("SELECT gen_random_uuid()", "SELECT random() FROM orders", "SELECT pg_catalog.clock_timestamp()"):
        assert not session_neutral(sql), sql  # without the snapshot's list
        assert session_neutral(sql, builtin), sql
        assert decide(sql, topology, ("public",)).keeps_state, sql
    for sql in ("SELECT set_config('a.b', 'c', false)", "SELECT setseed(0.5)", "SELECT pg_advisory_lock(1)",
                "SELECT my_function()", "SELECT other.random()"):
        assert not session_neutral(sql, builtin), sql
        assert decide(sql, topology, ("public",)).keeps_state is False, sql


# pieces of statements, the unusual among them: the expression path must find what PostgreSQL's scanner finds
PIECE = st.sampled_from([
    "SELECT", " ", "\n", "\t", "x", "t1", "_a", "abc_2", "FROM", "WHERE", "=", ",", "(", ")", "-", "+", "*", ".", "::",
    "int", "0", "7", "42", "1.5", ".5", "1.", "1e5", "2.5E-3", "1e", "0x1F", "1_000", "'a'", "'it''s'", "''", "'",
    "'x y'", "E'q'", "e'q'", "B'01'", "U&'d'", "N'n'", "$1", "$$d$$", '"Q1"', "--c\n", "/*c*/", "..", "é", "\\",
])


@settings(max_examples=400, deadline=None)
@given(pieces=st.lists(PIECE, max_size=12))
def test_the_constants_are_the_scanners(pieces: list[str]) -> None:
    sql = "".join(pieces)
    by_expression = _constants_by_expression(sql)
    if by_expression is not None:
        assert by_expression == _constants_by_scanner(sql), sql


def test_common_statements_take_the_expression_path() -> None:
    for sql in ("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;",
                "UPDATE t SET note = 'it''s', v = 1.5e3 WHERE id IN (1, 2, .5)",
                "INSERT INTO t (id, note) VALUES (1, 'a'), (2, 'b') RETURNING id"):
        assert _constants_by_expression(sql) == _constants_by_scanner(sql) and _constants_by_expression(sql), sql


def test_which_settings_are_carried_and_when() -> None:
    assert setting_change("SET statement_timeout = '5s'") == SettingChange("statement_timeout", "5s")
    assert setting_change("set TIME ZONE INTERVAL '+02:00' HOUR TO MINUTE") == SettingChange("timezone", None)
    assert setting_change("SET extra_float_digits TO -1") is None  # floats travel as text in the router
    assert setting_change("RESET ALL") == SettingChange(None, None)
    assert setting_change("SET LOCAL work_mem = '64MB'") == SettingChange("work_mem", "64MB", local=True)
    assert setting_change("SET search_path = a, public") == SettingChange("search_path", None)  # as reported
    for pinned in ("SET ROLE x", "SET x = a, b", "SET pgfleet.internal = on", "SET client_encoding = 'LATIN1'", "SET x = 1; SELECT 1",
                   "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "SELECT set_config('a.b', 'c', false)"):
        assert setting_change(pinned) is None, pinned
    settings: dict[str, str] = {}
    ok, failed = p.CommandComplete("SET").encode() + p.ReadyForQuery("I").encode(), \
        p.error_response("42704", "no such setting", severity="ERROR").encode() + p.ReadyForQuery("I").encode()
    assert settle(SettingChange("work_mem", "64MB"), ok + failed, settings, {}) and settings == {"work_mem": "64MB"}
    assert not settle(SettingChange("nosuch", "1"), failed + ok, settings, {}) and settings == {"work_mem": "64MB"}
    assert settle(SettingChange("work_mem", None), ok, settings, {}) and settings == {}


def test_which_client_bytes_may_change_roles_or_tables() -> None:
    from pgfleet.router import protocol as p
    from pgfleet.router.routing import may_change

    def query(text: str) -> bytes:
        return p.Query(text).encode()

    assert may_change(query("SELECT abalance FROM pgbench_accounts WHERE aid = 1")) == (False, False)
    assert may_change(query("SELECT * FROM users WHERE role_name = 'x'")) == (False, False)  # inside names
    assert may_change(query("CREATE ROLE app LOGIN")) == (True, False)
    assert may_change(query("grant select on t to app")) == (True, False)
    assert may_change(query("SELECT pgfleet.distribute_table('t', 'id')")) == (False, True)
    assert may_change(query("DROP TABLE t")) == (False, True)
    assert may_change(b"d" + query("DROP ROLE x")[1:]) == (False, False)  # COPY data is not looked at
