"""Plain multi-shard reads (no aggregate, ORDER BY or LIMIT) streamed by the router: the rows reach the client
as the workers send them, a client that does not read stops the workers' reads (bounded buffers), an error
after some rows ends the reply as PostgreSQL does, a role's missing privilege still goes to the coordinator,
and inside a transaction the read sees the transaction's writes. Compared with one plain table."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.pq import ExecStatus

from conftest import connect, routing_router
from test_roles import drop_role
from test_router_scatter import run
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

pytestmark = pytest.mark.cluster

ROWS = 120_000  # about 26 MB of rows: far more than the socket and transport buffers hold


@pytest.fixture
def big(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    for name in ("big", "big_plain"):
        conn.execute(f"CREATE TABLE {name} (id bigint, note text)")
        conn.execute(f"INSERT INTO {name} SELECT g, repeat('x', 200) || g FROM generate_series(1, {ROWS}) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "big"), "id", HashSpec(4)))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, big: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def _paused_session(server: RouterServer) -> Any:
    """The router's session whose worker reads are paused because its client does not read (within 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for session in list(server.context.sessions.values()):
            paced = list(session.paced)
            if paced and session.client_full and not any(c.transport.is_reading() for c in paced):
                return session
        time.sleep(0.05)
    raise AssertionError("the router did not pause the workers' reads for a client that does not read")


@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_a_client_that_does_not_read_pauses_the_workers(cluster: LocalCluster, router: RouterServer, big: str,
                                                        protocol: str) -> None:
    with connect(cluster, router.config.port, big) as conn:
        pgconn = conn.pgconn
        if protocol == "simple":  # and read nothing for now
            pgconn.send_query(b"SELECT id, note FROM big")
        else:  # Parse, Bind, Describe, Execute, Sync with a value, as drivers send statements
            pgconn.send_query_params(b"SELECT id, note FROM big WHERE id > $1", [b"0"])
        session = _paused_session(router)
        assert session.client.get_write_buffer_size() < 2 << 20  # not the 26 MB result (a read per node in flight, rows held)
        time.sleep(0.3)
        assert not any(c.transport.is_reading() for c in session.paced)  # still paused
        while pgconn.is_busy():  # read without blocking in libpq, which would hold the GIL the router needs
            select.select([pgconn.socket], [], [], 1.0)
            pgconn.consume_input()
        result = pgconn.get_result()
        assert result is not None and result.status == ExecStatus.TUPLES_OK
        ids = [int(result.get_value(i, 0) or b"0") for i in range(result.ntuples)]
        assert (len(ids), sum(ids)) == (ROWS, ROWS * (ROWS + 1) // 2)
        assert bytes(result.command_status or b"") == f"SELECT {ROWS}".encode()
        assert pgconn.get_result() is None
        assert not session.paced  # the read ended: the connections are not paced any more
        assert conn.execute("SELECT count(*), max(note) FROM big").fetchone() == \
            (ROWS, "x" * 200 + "99999")


def test_copy_to_a_client_that_does_not_read_pauses_the_workers(cluster: LocalCluster, router: RouterServer,
                                                                big: str) -> None:
    with connect(cluster, router.config.port, big) as conn:
        pgconn = conn.pgconn
        pgconn.send_query(b"COPY big TO STDOUT")
        session = _paused_session(router)
        assert session.client.get_write_buffer_size() < 2 << 20
        result = pgconn.get_result()  # the CopyOutResponse: libpq has it already
        assert result is not None and result.status == ExecStatus.COPY_OUT
        lines: list[bytes] = []
        while True:
            size, data = pgconn.get_copy_data(1)  # without blocking in libpq (the GIL)
            if size == 0:
                select.select([pgconn.socket], [], [], 1.0)
                pgconn.consume_input()
            elif size > 0:
                lines.append(bytes(data))
            else:
                break
        ids = [int(line.split(b"\t")[0]) for line in lines]
        assert (len(ids), sum(ids)) == (ROWS, ROWS * (ROWS + 1) // 2)
        while pgconn.is_busy():
            select.select([pgconn.socket], [], [], 1.0)
            pgconn.consume_input()
        done = pgconn.get_result()
        assert done is not None and bytes(done.command_status or b"") == f"COPY {ROWS}".encode()
        assert pgconn.get_result() is None
        assert not session.paced
        assert conn.execute("SELECT count(*) FROM big").fetchone() == (ROWS,)


def test_streamed_rows_and_errors_match_one_plain_table(cluster: LocalCluster, router: RouterServer, big: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, big) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, big) as direct:
        for statement in ("SELECT * FROM {t}", "SELECT id, length(note) FROM {t} WHERE id % 1000 = 7",
                          "SELECT id FROM {t} WHERE id < 0", "SELECT id, 1 / (id - 100000) FROM {t}",
                          "SELECT note::int FROM {t}"):
            before = stats.routed
            got = run(via_router, statement.format(t="big"), False)
            assert got == run(direct, statement.format(t="big_plain"), False), statement
            assert stats.routed == before + 1, statement
        # the extended protocol with a value (psycopg's server-side binding), the same rows
        for statement, value in (("SELECT id, note FROM {t} WHERE id > %s", 10), ("SELECT note FROM {t} WHERE id < %s", 0),
                                 ("SELECT id / (id - %s) FROM {t}", -1)):
            before = stats.routed
            got = via_router.execute(statement.format(t="big").encode(), (value,))
            want = direct.execute(statement.format(t="big_plain").encode(), (value,))
            assert (sorted(got.fetchall()), got.statusmessage) == (sorted(want.fetchall()), want.statusmessage)
            assert stats.routed == before + 1, statement
        with pytest.raises(psycopg.errors.DivisionByZero):
            via_router.execute(b"SELECT id / (id - %s) FROM big", (100000,))
        # after an error part-way, every worker connection was read to its end: the session goes on
        assert run(via_router, "SELECT count(*) FROM big", True) == run(direct, "SELECT count(*) FROM big_plain", True)


def test_a_streamed_read_in_a_transaction_sees_its_writes(cluster: LocalCluster, router: RouterServer, big: str) -> None:
    with connect(cluster, router.config.port, big) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, big) as direct:
        results = []
        for conn, table in ((via_router, "big"), (direct, "big_plain")):
            with conn.transaction(force_rollback=True):
                cur = psycopg.ClientCursor(conn)
                cur.execute(f"INSERT INTO {table} VALUES (-5, 'new'), (-6, 'newer')")
                cur.execute(f"UPDATE {table} SET note = 'changed' WHERE id = 77")
                cur.execute(f"SELECT id, note FROM {table} WHERE id < 100")
                results.append(sorted(cur.fetchall()))
                cur.execute(f"SELECT id FROM {table} WHERE id = 0 OR note = 'changed'")
                results.append(cur.fetchall())
                # the extended protocol with a value, in the transaction: the same, streamed too
                found = conn.execute(f"SELECT id, note FROM {table} WHERE id < %s".encode(), (100,))
                results.append(sorted(found.fetchall()))
        assert results[:3] == results[3:]
        assert results[2] == results[0]
        assert (-6, "newer") in results[0] and (77, "changed") in results[0]
        assert via_router.execute("SELECT count(*) FROM big WHERE id < 0").fetchone() == (0,)  # rolled back


ROLE, PASSWORD = "pgfleet_test_stream", "stream pw 1"


def test_a_role_without_the_privilege_gets_the_coordinators_error(fleet: Fleet, cluster: LocalCluster,
                                                                  router: RouterServer, big: str) -> None:
    conn = fleet.conn()
    drop_role(fleet, ROLE)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(big), sql.Identifier(ROLE)))
        stats = router.context.stats
        info = dict(host="127.0.0.1", dbname=cluster.spec.dbname, user=ROLE, password=PASSWORD, autocommit=True,
                    options=f"-c search_path={big}")
        with psycopg.connect(port=router.config.port, **info) as via_router, \
                psycopg.connect(port=cluster.spec.coordinator.port, **info) as direct:  # type: ignore[arg-type]
            fallbacks = stats.routing_fallbacks
            statement = "SELECT id FROM big WHERE id > 10"
            assert run(via_router, statement, False) == run(direct, statement, False) == ("error", "42501")
            assert stats.routing_fallbacks == fallbacks + 1  # refused on the workers, answered by the coordinator
            conn.execute(sql.SQL("GRANT SELECT ON big, big_plain TO {}").format(sql.Identifier(ROLE)))
            time.sleep(0.1)
            routed = stats.routed
            assert run(via_router, statement, False) == run(direct, statement.replace("big", "big_plain"), False)
            assert stats.routed == routed + 1
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        drop_role(fleet, ROLE)
