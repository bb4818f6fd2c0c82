"""Sessions of any role are routed under that role: the worker applies the privileges the coordinator has,
a refusal comes back in the coordinator's words, and tables with row-level security are not routed."""

from __future__ import annotations

import time
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
from test_roles import drop_role

pytestmark = pytest.mark.cluster

APP, PASSWORD = "pgfleet_test_app", "app pw 1"


@pytest.fixture
def data(fleet: Fleet, schema: str) -> Iterator[str]:
    """t (SELECT for app), u (SELECT on two columns for app), grps (reference, nothing for app), s (SELECT
    for app, row-level security: only ids up to 3)."""
    conn = fleet.conn()
    drop_role(fleet, APP)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), sql.Literal(PASSWORD)))
    for name in ("t", "u", "s"):
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, grp int, note text)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, g % 10, 'n' || g FROM generate_series(1, 100) g").format(
            sql.Identifier(name)))
        fleet.distribute(DistributeSpec(QualifiedName(schema, name), "id", HashSpec(4)) if name == "t" else
                         DistributeSpec(QualifiedName(schema, name), "id", colocate_with=QualifiedName(schema, "t")))
    conn.execute("CREATE TABLE grps (grp int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO grps SELECT g, 'g' || g FROM generate_series(0, 9) g")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "grps")))
    app = sql.Identifier(APP)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), app))
    conn.execute(sql.SQL("GRANT SELECT ON t, s TO {}").format(app))
    conn.execute(sql.SQL("GRANT SELECT (id, grp) ON u TO {}").format(app))
    conn.execute("ALTER TABLE s ENABLE ROW LEVEL SECURITY")
    conn.execute(sql.SQL("CREATE POLICY low ON s FOR SELECT TO {} USING (id <= 3)").format(app))
    yield schema
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    drop_role(fleet, APP)


@pytest.fixture
def router(cluster: LocalCluster, data: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def connect(cluster: LocalCluster, port: int, schema: str, user: str, password: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=port, dbname=cluster.spec.dbname, user=user, password=password,
                           options=f"-c search_path={schema}", autocommit=True)


def run(conn: psycopg.Connection[Any], statement: str) -> Any:
    cur = psycopg.ClientCursor(conn)  # simple protocol, as psql
    cur.execute(statement)
    return cur.fetchall() if cur.description else cur.statusmessage


def error_of(conn: psycopg.Connection[Any], statement: str) -> tuple[str | None, str | None]:
    with pytest.raises(psycopg.Error) as info:
        run(conn, statement)
    return info.value.sqlstate, info.value.diag.message_primary


def test_a_role_is_routed_with_its_privileges(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    stats = router.context.stats
    assert router.config.routing is not None and router.config.routing.roles_current
    with connect(cluster, router.config.port, data, APP, PASSWORD) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data, APP, PASSWORD) as direct:
        for statement in ("SELECT * FROM t WHERE id = 5", "SELECT id, grp FROM u WHERE id = 7",
                          "SELECT t.note, u.grp FROM t JOIN u ON u.id = t.id WHERE t.id = 9"):
            before = stats.routed
            assert run(via_router, statement) == run(direct, statement), statement
            assert stats.routed == before + 1, statement  # ran on the worker, as the role
        refused = ("INSERT INTO t VALUES (1000, 1, 'x')", "UPDATE t SET note = 'y' WHERE id = 5",
                   "SELECT t.id, g.label FROM t JOIN grps g ON g.grp = t.grp WHERE t.id = 5", "SELECT note FROM u WHERE id = 7",
                   "SELECT * FROM u WHERE id = 7")
        for statement in refused:
            before = (stats.routed, stats.routing_fallbacks)
            expected = error_of(direct, statement)
            assert expected[0] == "42501", statement
            assert error_of(via_router, statement) == expected, statement
            # tried on the worker, refused there, answered by the coordinator in its own words
            assert (stats.routed, stats.routing_fallbacks) == (before[0], before[1] + 1), statement
        assert run(direct, "SELECT count(*) FROM t WHERE id = 1000") == [(0,)]
        assert stats.pinned_sessions == 0


def test_row_level_security_tables_are_not_routed(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data, APP, PASSWORD) as via_router:
        before = stats.routed
        assert run(via_router, "SELECT id FROM s WHERE id = 7") == []  # the policy hides it
        assert run(via_router, "SELECT id, note FROM s WHERE id = 2") == [(2, "n2")]
        assert run(via_router, "SELECT count(*) FROM s") == [(3,)]
        assert stats.routed == before
        assert run(via_router, "SELECT id FROM t WHERE id = 7") == [(7,)]  # the same session routes t
        assert stats.routed == before + 1


def test_a_role_missing_on_the_worker_falls_back(fleet: Fleet, cluster: LocalCluster, router: RouterServer,
                                                 data: str) -> None:
    stats = router.context.stats
    for node in fleet.topology().workers:  # as if the copy had not been made yet
        with fleet.worker_conn(node) as w:
            w.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(APP)))
            w.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(APP)))
    with connect(cluster, router.config.port, data, APP, PASSWORD) as via_router:
        before = (stats.routed, stats.routing_fallbacks)
        assert run(via_router, "SELECT note FROM t WHERE id = 5") == [("n5",)]
        assert (stats.routed, stats.routing_fallbacks) == (before[0], before[1] + 1)


def test_a_roles_transaction_runs_on_the_worker_under_that_role(cluster: LocalCluster, router: RouterServer,
                                                                data: str, fleet: Fleet) -> None:
    """In a transaction routed to a worker the statements run as the client's role (SET LOCAL ROLE): what
    it may do works and commits there, what it may not do fails the transaction as on the coordinator."""
    fleet.conn().execute(sql.SQL("GRANT UPDATE (note) ON t TO {}").format(sql.Identifier(APP)))
    stats = router.context.stats
    with connect(cluster, router.config.port, data, APP, PASSWORD) as via_router:
        before = stats.worker_transactions
        assert run(via_router, "BEGIN") == "BEGIN"
        assert run(via_router, "UPDATE t SET note = 'by app' WHERE id = 5") == "UPDATE 1"
        assert run(via_router, "SELECT current_user, note FROM t WHERE id = 5") == [(APP, "by app")]
        assert run(via_router, "COMMIT") == "COMMIT"
        assert stats.worker_transactions == before + 1
        run(via_router, "BEGIN")
        assert run(via_router, "SELECT note FROM t WHERE id = 6") == [("n6",)]
        state, message = error_of(via_router, "UPDATE t SET grp = 0 WHERE id = 6")  # no UPDATE on grp
        assert state == "42501" and message is not None and message.startswith("permission denied for table"), message
        assert error_of(via_router, "SELECT 1")[0] == "25P02"
        assert run(via_router, "ROLLBACK") == "ROLLBACK"
    assert fleet.conn().execute("SELECT note, grp FROM t WHERE id IN (5, 6) ORDER BY id").fetchall() == [
        ("by app", 5), ("n6", 6)]


def test_a_membership_revoked_through_the_router_counts_at_once(cluster: LocalCluster, fleet: Fleet,
                                                                 router: RouterServer, data: str) -> None:
    """Roles and memberships fire no trigger on the coordinator: the router copies them to the workers every
    2 s, and at once after a statement of its own clients that may change them. Until the copy is made no
    statement of another role is routed, so a revoked membership never lets a routed statement read what the
    coordinator now refuses."""
    reader = f"{data}_reader"[:60]
    admin = fleet.conn()
    admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
    try:
        admin.execute(sql.SQL("GRANT SELECT ON u TO {}").format(sql.Identifier(reader)))  # app: id and grp only
        stats = router.context.stats
        routing = router.config.routing
        assert routing is not None
        with connect(cluster, router.config.port, data, APP, PASSWORD) as app, \
                psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                                user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                                autocommit=True) as via_router:
            assert run(via_router, f'GRANT "{reader}" TO "{APP}"') == "GRANT ROLE"
            assert run(app, "SELECT note FROM u WHERE id = 3") == [("n3",)]  # allowed now, wherever it ran
            deadline = time.monotonic() + 10
            while not routing.roles_current:  # copied at once, not at the next 2 s refresh
                assert time.monotonic() < deadline
                time.sleep(0.05)
            while True:  # the table's GRANT to the new role reaches the shards with the role
                before = stats.routed
                assert run(app, "SELECT note FROM u WHERE id = 4") == [("n4",)]
                if stats.routed == before + 1:  # by the worker's copy of the membership
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            for _ in range(5):
                assert run(via_router, f'REVOKE "{reader}" FROM "{APP}"') == "REVOKE ROLE"
                state, _message = error_of(app, "SELECT note FROM u WHERE id = 5")  # right after it
                assert state == "42501"
                assert run(via_router, f'GRANT "{reader}" TO "{APP}"') == "GRANT ROLE"
    finally:
        drop_role(fleet, reader)
