"""A reference-table write whose copies cannot take the same statement (an identity default, now(), a read
of a coordinator table) inside a router transaction: the router takes the rows the coordinator's trigger
queued and writes them on the copies in the transaction (router/refcopies.py), so the transaction's later
statements on the workers see them. The ORM pattern: a new reference row, then a distributed row that refers
to it, in one transaction; also as its first statement, which then no longer moves the transaction to the
coordinator."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from conftest import connect, login_role
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from test_router_refpart import copies
from test_router_txn import prepared_everywhere, routing_router, run


@pytest.fixture
def tables(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE kind (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL, "
                 "made timestamptz NOT NULL DEFAULT now())")
    conn.execute("CREATE TABLE thing (id bigint PRIMARY KEY, kind_id int NOT NULL REFERENCES kind (id))")
    fleet.reference(ReferenceSpec(QualifiedName(schema, "kind")))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "thing"), "id", HashSpec(4)))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, tables: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def kinds(fleet: Fleet, schema: str) -> set[tuple[object, ...]]:
    return copies(fleet, schema, "SELECT id, name, made FROM {copy}", "kind")


def test_a_new_reference_row_then_a_distributed_row_referring_to_it(cluster: LocalCluster, fleet: Fleet,
                                                                      router: RouterServer, tables: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        run(conn, "BEGIN")
        [(kind,)] = run(conn, "INSERT INTO kind (name) VALUES ('tools') RETURNING id") or []
        run(conn, f"INSERT INTO thing VALUES (1, {kind}), (2, {kind})")  # the shards' key finds the copy's row
        assert run(conn, "SELECT k.name, count(*) FROM thing t JOIN kind k ON k.id = t.kind_id GROUP BY 1") \
            == [("tools", 2)]
        assert direct.execute("SELECT count(*) FROM kind").fetchone() == (0,)  # nothing visible before COMMIT
        run(conn, "COMMIT")
        assert stats.coordinator_transactions == 0 and stats.reference_copies_written == 1
        # every copy has the coordinator's row: its identity value and its default timestamp
        assert kinds(fleet, tables) == {tuple(direct.execute("SELECT id, name, made FROM kind").fetchone() or ())}
        assert direct.execute("SELECT count(*) FROM thing").fetchone() == (2,)
        assert direct.execute("SELECT count(*) FROM pgfleet.ddl_queue").fetchone() == (0,)
        # a referenced row cannot go: the copy refuses at the statement, not at COMMIT, and nothing is applied
        run(conn, "BEGIN")
        run(conn, "INSERT INTO thing VALUES (3, 1)")
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            run(conn, "DELETE FROM kind WHERE name = 'tools' AND made <= now()")
        run(conn, "ROLLBACK")
        assert direct.execute("SELECT count(*) FROM kind").fetchone() == (1,)
        assert direct.execute("SELECT count(*) FROM thing").fetchone() == (2,)
        # a savepoint rolled back takes the copies' rows with it
        run(conn, "BEGIN")
        run(conn, "SAVEPOINT s")
        run(conn, "INSERT INTO kind (name) VALUES ('gone')")
        run(conn, "ROLLBACK TO SAVEPOINT s")
        run(conn, "INSERT INTO kind (name) VALUES ('kept')")
        run(conn, "COMMIT")
        assert {r[1] for r in kinds(fleet, tables)} == {"tools", "kept"}
        # the price of joining at the first statement: what only the coordinator runs is refused after it
        run(conn, "BEGIN")
        run(conn, "INSERT INTO kind (name) VALUES ('more')")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match=r"wrote on worker w1, w2 and a connection "
                           r"of the coordinator's \(coord\)"):
            run(conn, "CREATE TABLE refused_here (id int)")
        run(conn, "ROLLBACK")
        assert direct.execute("SELECT count(*) FROM kind WHERE name = 'more'").fetchone() == (0,)
    assert kinds(fleet, tables) == {tuple(r) for r in fleet.conn().execute(
        sql.SQL("SELECT id, name, made FROM {}.kind").format(sql.Identifier(tables))).fetchall()}
    assert prepared_everywhere(cluster) == 0


def test_extended_protocol_and_a_role_of_its_own(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                 tables: str) -> None:
    """psycopg's bound parameters (the extended protocol), as a role that may write both tables but not the
    queue: the router takes the queue as its own login, and gives the role back."""
    conn = fleet.conn()
    with login_role(fleet, f"{tables}_clerk"[:60]) as role:
        who = sql.Identifier(role)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(tables), who))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON kind, thing TO {}").format(who))
        time.sleep(1.5)  # the router's next refresh copies the role to the workers
        with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=role,
                             password="pw", options=f"-c search_path={tables}") as clerk:
            for n in range(3):  # prepared on the third run (psycopg's prepare_threshold)
                kind = clerk.execute("INSERT INTO kind (name) VALUES (%s) RETURNING id", (f"k{n}",)).fetchone()
                assert kind is not None
                clerk.execute("INSERT INTO thing VALUES (%s, %s)", (n, kind[0]))
                assert clerk.execute("SELECT current_user, (SELECT count(*) FROM thing WHERE id = %s)",
                                     (n,)).fetchone() == (role, 1)
                clerk.commit()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                clerk.execute("DELETE FROM kind WHERE id = %s", (1,))
            clerk.rollback()
    assert router.context.stats.reference_copies_written == 3 and router.context.stats.coordinator_transactions == 0
    assert {r[1] for r in kinds(fleet, tables)} == {"k0", "k1", "k2"}
    assert conn.execute(sql.SQL("SELECT count(*) FROM {}.thing").format(sql.Identifier(tables))).fetchone() == (3,)
