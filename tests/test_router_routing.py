"""Single-shard statements of the simple protocol go straight to the owning worker and return what the
coordinator returns: rows, column types, command tags, errors; sessions with state stay on the coordinator."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

pytestmark = pytest.mark.cluster


@pytest.fixture
def data(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, grp int, val numeric(10, 2), note text, at timestamptz)")
    conn.execute("INSERT INTO t SELECT g, g % 10, g / 7.0, 'n' || g, '2024-01-01'::timestamptz + g * interval '1 hour' "
                 "FROM generate_series(1, 300) g")
    conn.execute("CREATE TABLE grps (grp int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO grps SELECT g, 'g' || g FROM generate_series(0, 9) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "grps")))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, data: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def connect(cluster: LocalCluster, port: int, schema: str, **params: Any) -> psycopg.Connection[Any]:
    info = dict(host="127.0.0.1", port=port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                password=cluster.spec.coordinator.password, options=f"-c search_path={schema},public")
    return psycopg.connect(autocommit=True, **{**info, **params})  # type: ignore[arg-type]


def run(conn: psycopg.Connection[Any], statement: str) -> tuple[Any, ...]:
    cur = psycopg.ClientCursor(conn)  # simple protocol, as psql and pgbench -M simple
    cur.execute(statement)
    rows = cur.fetchall() if cur.description else None
    return (rows, [(d.name, d.type_code) for d in cur.description or []], cur.statusmessage, cur.rowcount)


STATEMENTS = [
    "SELECT * FROM t WHERE id = {k}",
    "SELECT t.id, t.val, g.label, t.at FROM t JOIN grps g ON g.grp = t.grp WHERE t.id = {k}",
    "SELECT count(*), sum(val), max(at) FROM t WHERE id IN ({k}, {k})",
    "UPDATE t SET note = note || '+' WHERE id = {k} RETURNING id, note",
    "DELETE FROM t WHERE id = {k} + 0 AND false",
    "INSERT INTO t (id, grp, val, note) VALUES ({k}000, 1, 1.5, 'new') RETURNING *",
    "DELETE FROM t WHERE id = {k} RETURNING id",
]


def test_routed_statements_match_the_coordinator(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for statement in STATEMENTS:
            for k in (1, 2, 3, 42, 299):
                before = stats.routed
                got = run(via_router, statement.format(k=k))
                routed = stats.routed - before
                # the same statement on the coordinator: the row was changed by the routed one, so compare
                # reads, and writes by what they report
                if statement.startswith("SELECT"):
                    assert got == run(direct, statement.format(k=k)), statement
                assert routed == 1, statement  # "id = {k} + 0" pins no shard: the router runs it on every shard
        assert stats.pinned_sessions == 0
        assert run(direct, "SELECT count(*) FROM t WHERE id >= 1000")[0] == [(5,)]
        assert run(direct, "SELECT count(*) FROM t WHERE note LIKE '%+'")[0] == [(0,)]  # deleted afterwards


def test_command_tags_and_errors_match(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for conn, k in ((via_router, 5000), (direct, 5001)):
            assert run(conn, f"INSERT INTO t (id, grp) VALUES ({k}, 1)")[2:] == ("INSERT 0 1", 1)
            assert run(conn, f"UPDATE t SET grp = 2 WHERE id = {k}")[2:] == ("UPDATE 1", 1)
        codes = []
        for conn in (via_router, direct):
            with pytest.raises(psycopg.Error) as caught:
                run(conn, "SELECT 1 / (id - 7) FROM t WHERE id = 7")
            codes.append(caught.value.sqlstate)
            assert run(conn, "SELECT note FROM t WHERE id = 8")[0] == [("n8",)]  # the session goes on
        assert codes == ["22012", "22012"]
        assert router.context.stats.routed == 4  # INSERT, UPDATE, the failing SELECT, the SELECT after it


SETTINGS = [  # (a SET or RESET, a routed statement whose answer it changes)
    ("SET TimeZone = 'Asia/Tokyo'", "SELECT at::text FROM t WHERE id = 9"),
    ("SET DateStyle = 'German'", "SELECT at::date::text, at::text FROM t WHERE id = 9"),
    ("SET bytea_output = 'escape'", "SELECT note::bytea FROM t WHERE id = 9"),
    ("SET IntervalStyle = 'sql_standard'", "SELECT (at - '2024-01-01')::text FROM t WHERE id = 9"),
    ("SET LOCAL bytea_output = 'hex'", "SELECT note::bytea FROM t WHERE id = 9"),  # no effect here
    ("SET no_such_setting = 1", "SELECT at::text FROM t WHERE id = 9"),  # refused: nothing changes
    ("RESET DateStyle", "SELECT at::date::text, at::text FROM t WHERE id = 9"),
    ("RESET ALL", "SELECT at::text, note::bytea FROM t WHERE id = 9"),
]


def test_set_applies_to_routed_statements(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """SET / RESET in autocommit (simple protocol, as psql) keep the session routable, and its routed
    statements answer under the settings as the coordinator does in the same session."""
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as conn, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for setting, statement in SETTINGS:
            want = []
            for session in (conn, direct):
                with contextlib.suppress(psycopg.errors.UndefinedObject):
                    run(session, setting)
                want.append(run(session, statement))
            routed = stats.routed
            assert run(conn, statement) == want[1], setting  # once more, to count it
            assert want[0] == want[1], setting
            assert stats.routed == routed + 1 and stats.pinned_sessions == 0, setting
        assert router.context.stats.routing_fallbacks == 0


def test_session_state_keeps_the_session_on_the_coordinator(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as conn:
        run(conn, "SELECT note FROM t WHERE id = 9")
        routed = stats.routed
        run(conn, "SET extra_float_digits = 0")  # kept on the coordinator: the router moves floats as text
        assert stats.pinned_sessions == 1
        run(conn, "SET ROLE NONE")  # a role, not a setting: the coordinator's from now on
        assert run(conn, "SELECT note FROM t WHERE id = 9")[0] == [("n9",)]
        assert stats.routed == routed and stats.pinned_sessions == 1
    with connect(cluster, router.config.port, data) as conn:
        assert conn.execute("SELECT note FROM t WHERE id = %s", (9,)).fetchall() == [("n9",)]  # extended: routed
        assert stats.routed == routed + 1
        # psycopg sends a statement without values as a simple Query: a SET keeps the session routable
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert conn.execute("SELECT at::text FROM t WHERE id = %s", (9,)).fetchall() == [("2024-01-01 18:00:00+09",)]
        assert stats.routed == routed + 2 and stats.pinned_sessions == 1
        # the extended protocol (Parse of the unnamed statement, Bind, Execute: JDBC's way) is carried too
        conn.cursor(binary=True).execute("SET bytea_output = 'escape'")  # binary: psycopg's extended protocol
        assert conn.execute("SELECT note::bytea::text FROM t WHERE id = %s", (9,)).fetchall() == [("n9",)]
        assert stats.routed == routed + 3 and stats.pinned_sessions == 1
        # Django's time zone (set_config with a value, the extended protocol) pins it
        conn.execute("SELECT set_config('TimeZone', %s, false)", ("Europe/Paris",))
        assert conn.execute("SELECT at::text FROM t WHERE id = %s", (9,)).fetchall() == [("2024-01-01 10:00:00+01",)]
        assert stats.routed == routed + 3 and stats.pinned_sessions == 2


def test_built_in_functions_keep_the_session_routable(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """A statement calling built-in functions that leave no session state (gen_random_uuid, random,
    clock_timestamp, …) goes to the coordinator when it cannot be routed, and the session's next statements are
    routed still; set_config pins the session, as any statement that may change its state."""
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as conn:
        for statement in ("SELECT gen_random_uuid() IS NOT NULL, random() < 1, clock_timestamp() > '2000-01-01'",
                          "SELECT count(*) FROM generate_series(1, 3) g WHERE g::text ~ '^[0-9]$'"):
            assert run(conn, statement)[0] in ([(True, True, True)], [(3,)])
            routed = stats.routed
            assert run(conn, "SELECT note FROM t WHERE id = 9")[0] == [("n9",)]
            assert stats.routed == routed + 1 and stats.pinned_sessions == 0, statement
        run(conn, "SELECT set_config('pgfleet_test.x', 'y', false)")
        routed = stats.routed
        assert run(conn, "SELECT note, current_setting('pgfleet_test.x') FROM t WHERE id = 9")[0] == [("n9", "y")]
        assert stats.routed == routed and stats.pinned_sessions == 1


@pytest.fixture
def reader(fleet: Fleet, data: str) -> Iterator[tuple[str, str]]:
    role, password = "router_reader", "reader pw"
    conn = fleet.conn()
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(data), sql.Identifier(role)))
    yield role, password
    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_privilege_is_refused(cluster: LocalCluster, router: RouterServer, data: str,
                                             reader: tuple[str, str]) -> None:
    role, password = reader
    stats = router.context.stats
    with connect(cluster, router.config.port, data, user=role, password=password) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table t"):
            run(conn, "SELECT * FROM t WHERE id = 1")
        assert run(conn, "SELECT current_user")[0] == [(role,)]
    # refused on the worker (or its role not copied there yet): the coordinator answers; nothing pinned
    assert (stats.routed, stats.pinned_sessions) == (0, 0)


def test_cancel_reaches_the_worker_running_a_routed_statement(cluster: LocalCluster, router: RouterServer,
                                                              data: str) -> None:
    import threading
    import time

    from pgfleet.execute.connect import connect as connect_node
    from pgfleet.router.analyze import Shard, analyze

    routing = router.config.routing
    assert routing is not None
    statement = "UPDATE t SET val = 0 WHERE id = 1"
    route = analyze(statement, routing.topology, search_path=(data, "public"))
    assert isinstance(route, Shard)
    shard = next(s for s in routing.topology.table(data, "t").shards if s.index == route.shard_index)  # type: ignore[union-attr]
    with connect_node(cluster.endpoint(route.node), autocommit=False) as locker, \
            connect(cluster, router.config.port, data) as conn:
        shard_table = sql.Identifier(shard.shard_schema, shard.shard_table)
        locker.execute(sql.SQL("SELECT 1 FROM {} WHERE id = 1 FOR UPDATE").format(shard_table))
        routed = router.context.stats.routed
        timer = threading.Timer(0.5, conn.cancel_safe)
        start = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            run(conn, statement)  # waits for the worker's row lock until cancelled
        timer.join()
        assert time.monotonic() - start < 5
        assert router.context.stats.routed == routed + 1
        locker.rollback()
        assert run(conn, statement)[2] == "UPDATE 1"


def test_a_query_split_across_packets_is_not_misread(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """The tail of a Query that began in an earlier packet must never be taken for a whole statement."""
    import asyncio

    from pgfleet.router import protocol as p
    from pgfleet.router import wire
    from pgfleet.router.backend import WorkerConnection, WorkerLogin

    async def scenario() -> list[p.Message]:
        login = WorkerLogin("127.0.0.1", router.config.port, cluster.spec.superuser, cluster.spec.coordinator.password,
                            cluster.spec.dbname)
        conn = await WorkerConnection.open(login, (("search_path", f"{data},public"),))
        query = p.Query("123SELECT * FROM t WHERE id = 1").encode()
        reply: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        conn.send(query[:3], reply.set_result)  # part of the header only; the tail, read as a message, is a routable SELECT
        await asyncio.sleep(0.3)
        assert conn.transport is not None
        conn.transport.write(query[3:])
        first = await asyncio.wait_for(reply, 10)
        assert first is not None
        messages = [p.decode_backend(t, b) for t, b in wire.Framer().feed(first)]
        messages += [p.decode_backend(t, b) for t, b in await asyncio.wait_for(conn.request("SELECT 'in sync'"), 10)]
        conn.close()
        return messages

    messages = asyncio.run(scenario())
    errors = [m for m in messages if isinstance(m, p.ErrorResponse)]
    assert [e.sqlstate for e in errors] == ["42601"]  # the coordinator's syntax error for the real statement
    assert p.DataRow((b"in sync",)) in messages


def test_a_worker_connection_ended_while_idle_is_opened_again(cluster: LocalCluster, router: RouterServer,
                                                              data: str) -> None:
    """The worker ends the router's idle connection (restart, pg_terminate_backend): the next routed
    statement opens a new one and still runs on the worker, not on the coordinator."""
    import time

    from pgfleet.execute.connect import connect as connect_node
    from pgfleet.router.analyze import Shard, analyze

    routing = router.config.routing
    assert routing is not None
    route = analyze("SELECT * FROM t WHERE id = 1", routing.topology, search_path=(data, "public"))
    assert isinstance(route, Shard)
    with connect(cluster, router.config.port, data) as conn:
        expected = run(conn, "SELECT * FROM t WHERE id = 1")
        with connect_node(cluster.endpoint(route.node), autocommit=True) as admin:
            ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE application_name = 'pgfleet router'").fetchone()
        assert ended is not None and ended[0] >= 1
        time.sleep(0.5)  # the worker's FATAL message and end of connection reach the router
        stats = router.context.stats
        routed, fallbacks = stats.routed, stats.routing_fallbacks
        assert run(conn, "SELECT * FROM t WHERE id = 1") == expected
        assert (stats.routed, stats.routing_fallbacks) == (routed + 1, fallbacks)


def test_a_statement_in_flight_when_the_worker_connection_breaks_gets_an_error(
        cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """A routed write whose worker connection breaks while it runs may have taken effect there: the
    client gets an error, and the statement is not run a second time on the coordinator."""
    import threading

    from pgfleet.execute.connect import connect as connect_node
    from pgfleet.router.analyze import Shard, analyze

    routing = router.config.routing
    assert routing is not None
    statement = "UPDATE t SET val = val + 1 WHERE id = 1 RETURNING val"
    route = analyze(statement, routing.topology, search_path=(data, "public"))
    assert isinstance(route, Shard)
    shard = next(s for s in routing.topology.table(data, "t").shards if s.index == route.shard_index)  # type: ignore[union-attr]
    with connect_node(cluster.endpoint(route.node), autocommit=False) as locker, \
            connect_node(cluster.endpoint(route.node), autocommit=True) as admin, \
            connect(cluster, router.config.port, data) as conn:
        before = run(conn, "SELECT val FROM t WHERE id = 1")[0]
        locker.execute(sql.SQL("SELECT 1 FROM {} WHERE id = 1 FOR UPDATE").format(
            sql.Identifier(shard.shard_schema, shard.shard_table)))
        fallbacks = router.context.stats.routing_fallbacks

        def end_the_routers_worker_backend() -> None:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'pgfleet router' AND wait_event_type = 'Lock'")

        killer = threading.Timer(0.5, end_the_routers_worker_backend)
        releaser = threading.Timer(2.0, locker.rollback)  # a statement re-run on the coordinator gets the row then
        killer.start()
        releaser.start()
        try:
            with pytest.raises(psycopg.OperationalError, match="may or may not have taken effect"):
                run(conn, statement)  # waits for the row lock until its worker backend ends
        finally:
            killer.join()
            releaser.join()
        assert router.context.stats.routing_fallbacks == fallbacks
        assert run(conn, "SELECT val FROM t WHERE id = 1")[0] == before  # ran nowhere: the worker's was rolled back
