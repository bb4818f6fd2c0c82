"""The router relays sessions to the coordinator transparently: the same statements give the same
results, errors, notices and notifications through the router as directly; authentication is the
coordinator's (SCRAM end to end); cancel works through the router's own keys, also across processes."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgfleet.cluster.local import LocalCluster
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.keys import SESSION_BITS, process_of
from pgfleet.router.server import RouterConfig, RouterServer, serve_in_thread

pytestmark = pytest.mark.cluster


def coordinator(cluster: LocalCluster) -> tuple[str, int]:
    return ("127.0.0.1", cluster.spec.coordinator.port)


@pytest.fixture(scope="module")
def router(cluster: LocalCluster) -> Iterator[RouterServer]:
    [port] = claim_ports(1, cluster.directory, start=6432)
    try:
        with serve_in_thread(RouterConfig(port=port, upstream=lambda: coordinator(cluster))) as server:
            yield server
    finally:
        release_ports([port], cluster.directory)


def conninfo(cluster: LocalCluster, port: int, **params: Any) -> str:
    from psycopg.conninfo import make_conninfo

    coord = cluster.spec.coordinator
    base = {"host": "127.0.0.1", "port": port, "dbname": cluster.spec.dbname, "user": cluster.spec.superuser,
            "password": coord.password}
    return make_conninfo("", **{**base, **params})


def both(cluster: LocalCluster, router: RouterServer, **params: Any) -> dict[str, str]:
    """Connection strings of the two endpoints the same assertions run against."""
    return {"direct": conninfo(cluster, cluster.spec.coordinator.port, **params),
            "router": conninfo(cluster, router.config.port, **params)}


def run_session(info: str) -> list[Any]:
    """A mix of simple, extended, prepared, binary, pipeline, server-side cursor and COPY traffic."""
    out: list[Any] = []
    with psycopg.connect(info, autocommit=True) as conn:
        cur = psycopg.ClientCursor(conn)  # simple protocol
        cur.execute("SELECT 1 AS a, 'x'::text AS b; SELECT generate_series(1, 3)")
        out.append((cur.fetchall(), [d.type_code for d in cur.description or []]))
        assert cur.nextset()
        out.append(cur.fetchall())
        out.append(conn.execute("SELECT %s::int + 1, %s::numeric", (41, "1.5")).fetchall())
        for _ in range(3):
            out.append(conn.execute("SELECT %s::bigint * 2", (21,), prepare=True).fetchone())
        out.append(conn.cursor(binary=True).execute("SELECT %b::int4, now() IS NOT NULL, %b::bytea", (7, b"\x00\xff")).fetchall())
        with conn.pipeline():
            c1 = conn.execute("SELECT 1")
            c2 = conn.execute("SELECT %s::text", ("two",))
            c3 = conn.execute("SELECT generate_series(1, %s)", (4,))
        out.append((c1.fetchall(), c2.fetchall(), c3.fetchall()))
        with conn.transaction(), conn.cursor(name="portal") as named:  # named portal, fetched in parts
            named.execute("SELECT g FROM generate_series(1, 25) g")
            out.append((named.fetchmany(10), named.fetchmany(10), named.fetchall()))
        conn.execute("CREATE TEMP TABLE relay_copy (i int, t text)")
        with conn.cursor().copy("COPY relay_copy FROM STDIN") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}\twith tab"))
        with conn.cursor().copy("COPY (SELECT * FROM relay_copy ORDER BY i) TO STDOUT") as copy:
            out.append(b"".join(bytes(chunk) for chunk in copy))
        out.append(conn.execute("SELECT count(*), sum(i) FROM relay_copy").fetchone())
    return out


def test_same_results_direct_and_through_router(cluster: LocalCluster, router: RouterServer) -> None:
    results = {name: run_session(info) for name, info in both(cluster, router).items()}
    assert results["router"] == results["direct"]
    assert results["router"][-1] == (1000, 499500)


def error_fields(info: str, statement: str) -> dict[str, Any]:
    with psycopg.connect(info, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(statement)
        diag = caught.value.diag
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
        return {k: getattr(diag, k) for k in ("sqlstate", "severity_nonlocalized", "message_primary", "message_detail",
                                              "message_hint", "statement_position", "context", "source_function")}


@pytest.mark.parametrize(("statement", "sqlstate"), [
    ("SELECT 1/0", "22012"),
    ("SELECT * FROM no_such_table_here", "42P01"),
    ("SELEC 1", "42601"),
    ("DO $$ BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = 'P0099', DETAIL = 'd', HINT = 'h'; END $$", "P0099"),
])
def test_errors_arrive_exactly(cluster: LocalCluster, router: RouterServer, statement: str, sqlstate: str) -> None:
    fields = {name: error_fields(info, statement) for name, info in both(cluster, router).items()}
    assert fields["router"] == fields["direct"]
    assert fields["router"]["sqlstate"] == sqlstate


def test_notice_parameter_status_and_notify(cluster: LocalCluster, router: RouterServer) -> None:
    info = both(cluster, router, application_name="relay-test")["router"]
    with psycopg.connect(info, autocommit=True) as listener, psycopg.connect(info, autocommit=True) as talker:
        notices: list[str] = []
        talker.add_notice_handler(lambda d: notices.append(f"{d.severity_nonlocalized} {d.message_primary}"))
        talker.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        assert notices == ["NOTICE hello 42"]
        assert talker.execute("SELECT current_setting('application_name')").fetchone() == ("relay-test",)
        talker.execute("SET application_name = 'renamed'")
        assert talker.info.parameter_status("application_name") == "renamed"
        listener.execute("LISTEN relay_channel")
        talker.execute("SELECT pg_notify('relay_channel', 'payload 1')")
        got = next(listener.notifies(timeout=5, stop_after=1))
        assert (got.channel, got.payload) == ("relay_channel", "payload 1")


@pytest.fixture(scope="module")
def other_role(cluster: LocalCluster) -> Iterator[tuple[str, str, str]]:
    """A non-superuser with a password and its own database."""
    role, password, database = "relay_user", "s3cret 'pass", "relay_db"
    with psycopg.connect(conninfo(cluster, cluster.spec.coordinator.port), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    yield role, password, database
    with psycopg.connect(conninfo(cluster, cluster.spec.coordinator.port), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def test_any_user_and_database_with_scram(cluster: LocalCluster, router: RouterServer,
                                          other_role: tuple[str, str, str]) -> None:
    role, password, database = other_role
    info = both(cluster, router, user=role, password=password, dbname=database)["router"]
    with psycopg.connect(info) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (role, database)
    with psycopg.connect(conninfo(cluster, cluster.spec.coordinator.port), autocommit=True) as conn:
        assert conn.execute("SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s",
                            (role,)).fetchone() == (True,)


def test_wrong_password_gets_the_coordinators_error(cluster: LocalCluster, router: RouterServer,
                                                    other_role: tuple[str, str, str]) -> None:
    role, _, database = other_role
    messages = {}
    for name, info in both(cluster, router, user=role, password="wrong", dbname=database).items():
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(info)
        messages[name] = str(caught.value).rsplit("failed: ", 1)[-1]
    assert messages["router"] == messages["direct"]
    assert f'password authentication failed for user "{role}"' in messages["router"]


def test_ssl_refused_politely(cluster: LocalCluster, router: RouterServer) -> None:
    info = both(cluster, router)["router"]
    with psycopg.connect(info + " sslmode=prefer") as conn:  # SSLRequest answered 'N', then plain text
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        psycopg.connect(info + " sslmode=require")
    for request in (wire.SSLRequest(), wire.GSSENCRequest()):
        with socket.create_connection(("127.0.0.1", router.config.port), timeout=5) as sock:
            sock.sendall(request.encode())
            assert sock.recv(1) == b"N"


def read_backend(sock: socket.socket) -> list[p.Message]:
    framer, messages = wire.Framer(), []
    while chunk := sock.recv(65536):
        messages += [p.decode_backend(t, b) for t, b in framer.feed(chunk)]
    return messages


@pytest.mark.parametrize(("payload", "message"), [
    (struct.pack("!i", 3), "invalid length of startup packet: 3"),
    (struct.pack("!ii", 8, 2 << 16), "unsupported frontend protocol 2.0"),
    (wire.StartupMessage(wire.PROTOCOL_3_0, (("user", "postgres"),)).encode() + b"S" + struct.pack("!i", 50_000),
     "invalid message length 50000 for message type b'S'"),
])
def test_malformed_input_gets_protocol_violation(router: RouterServer, payload: bytes, message: str) -> None:
    with socket.create_connection(("127.0.0.1", router.config.port), timeout=5) as sock:
        sock.sendall(payload)
        errors = [m for m in read_backend(sock) if isinstance(m, p.ErrorResponse)]
    assert [(e.sqlstate, e.field("S")) for e in errors] == [("08P01", "FATAL")]
    assert message in (errors[0].message or "")


def test_unreachable_coordinator(cluster: LocalCluster) -> None:
    [port, dead] = claim_ports(2, cluster.directory, start=6500)
    try:
        with serve_in_thread(RouterConfig(port=port, upstream=lambda: ("127.0.0.1", dead))), \
                pytest.raises(psycopg.OperationalError, match=f"cannot connect to the coordinator at 127.0.0.1:{dead}"):
            psycopg.connect(conninfo(cluster, port))
    finally:
        release_ports([port, dead], cluster.directory)


def sleep_then_cancel(conn: psycopg.Connection[Any], cancel: Any) -> tuple[type[BaseException], float]:
    timer = threading.Timer(0.5, cancel)
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            conn.execute("SELECT pg_sleep(10)")
    finally:
        timer.join()
    return type(caught.value), time.monotonic() - start


def test_cancel_through_router(cluster: LocalCluster, router: RouterServer) -> None:
    with psycopg.connect(both(cluster, router)["router"], autocommit=True) as conn:
        router_pid = conn.info.backend_pid
        server_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert server_pid is not None and router_pid != server_pid[0]  # the client holds the router's key
        assert process_of(router_pid) == 0
        # cancel_safe: the blocking libpq cancel would hold the GIL that this in-process router needs
        # (the CLI test cancels a router in its own process with the blocking call, as psql does)
        _, elapsed = sleep_then_cancel(conn, conn.cancel_safe)
        assert elapsed < 5
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)


def test_cancel_reaches_the_router_process_holding_the_session(cluster: LocalCluster) -> None:
    """A cancel sent to router process 0 for a session of process 1 is forwarded to process 1."""
    ports = claim_ports(2, cluster.directory, start=6600)
    upstream = lambda: coordinator(cluster)  # noqa: E731
    try:
        with serve_in_thread(RouterConfig(port=ports[1], upstream=upstream, process_index=1)) as second, \
                serve_in_thread(RouterConfig(port=ports[0], upstream=upstream, process_index=0,
                                             peers={1: ("127.0.0.1", ports[1])})), \
                psycopg.connect(conninfo(cluster, ports[1]), autocommit=True) as conn:
            pid = conn.info.backend_pid
            assert pid >> SESSION_BITS == 1
            key = second.context.sessions[pid].client_key
            assert key is not None

            def cancel_via_first() -> None:
                with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as sock:
                    sock.sendall(wire.CancelRequest(key.process_id, key.secret).encode())
                    sock.recv(1)

            _, elapsed = sleep_then_cancel(conn, cancel_via_first)
            assert elapsed < 5
            # a wrong secret cancels nothing
            wrong = wire.CancelRequest(key.process_id, bytes(b ^ 1 for b in key.secret))

            def send_wrong() -> None:
                with socket.create_connection(("127.0.0.1", ports[0]), timeout=5) as sock:
                    sock.sendall(wrong.encode())

            timer = threading.Timer(0.3, send_wrong)
            timer.start()
            assert conn.execute("SELECT pg_sleep(1), 'done'").fetchone() == ("", "done")
            timer.join()
    finally:
        release_ports(ports, cluster.directory)


def test_psql_through_router(cluster: LocalCluster, router: RouterServer) -> None:
    env = {**os.environ, "PGPASSWORD": cluster.spec.coordinator.password}
    argv = [cluster.binaries.path("psql"), "-X", "-h", "127.0.0.1", "-U", cluster.spec.superuser, "-d",
            cluster.spec.dbname, "-At", "-v", "ON_ERROR_STOP=1", "-c", "SELECT 6 * 7", "-c", "\\copy (SELECT 1, 2) TO STDOUT"]
    outputs = {name: subprocess.run([*argv, "-p", str(port)], check=False, capture_output=True, text=True, env=env, timeout=30)
               for name, port in (("direct", cluster.spec.coordinator.port), ("router", router.config.port))}
    assert outputs["router"].stdout == outputs["direct"].stdout == "42\n1\t2\n"
    bad = subprocess.run([*argv[:-4], "-c", "SELECT 1/0", "-p", str(router.config.port)], check=False,
                         capture_output=True, text=True, env=env, timeout=30)
    assert bad.returncode == 1 and "ERROR:  division by zero" in bad.stderr


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_through_router(cluster: LocalCluster, router: RouterServer, tmp_path: Any, mode: str) -> None:
    """pgbench's writes through the router land exactly as many times as it reports."""
    info = conninfo(cluster, cluster.spec.coordinator.port)
    with psycopg.connect(info, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS relay_counter")
        conn.execute("CREATE TABLE relay_counter (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute("INSERT INTO relay_counter SELECT g, 0 FROM generate_series(1, 10) g")
    script = tmp_path / "bump.sql"
    script.write_text("\\set id random(1, 10)\nUPDATE relay_counter SET n = n + 1 WHERE id = :id;\n"
                      "SELECT n FROM relay_counter WHERE id = :id;\n")
    env = {**os.environ, "PGPASSWORD": cluster.spec.coordinator.password}
    result = subprocess.run([cluster.binaries.path("pgbench"), "-n", "-h", "127.0.0.1", "-p", str(router.config.port),
                             "-U", cluster.spec.superuser, "-M", mode, "-c", "4", "-j", "2", "-t", "50", "-f", str(script),
                             cluster.spec.dbname], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "number of transactions actually processed: 200/200" in result.stdout
    assert "number of failed transactions: 0" in result.stdout
    with psycopg.connect(info, autocommit=True) as conn:
        assert conn.execute("SELECT sum(n) FROM relay_counter").fetchone() == (200,)
        conn.execute("DROP TABLE relay_counter")
