"""Reference-table writes in a router transaction that already wrote on workers: the coordinator joins the
transaction as a participant and commits last (router/refpart.py, twophase.commit_on_coordinator); the
router writes every copy itself when the statement allows it (router/refcopies.py), else the coordinator's
trigger does at COMMIT."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import connect, login_role
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.pgbench import pgbench_numbers
from pgfleet.proc import run as run_proc
from pgfleet.router.refpart import coordinator_part, reads_table
from pgfleet.router.routing import PreparedCache
from pgfleet.router.server import RouterServer
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from pgfleet.topology.model import Shard
from test_router_txn import prepared_everywhere, routing_router, run

ACCOUNTS = 20


@pytest.fixture
def tables(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint NOT NULL)")
    conn.execute(f"INSERT INTO acct SELECT g, 100 FROM generate_series(1, {ACCOUNTS}) g")
    conn.execute("CREATE TABLE branch (id int PRIMARY KEY, total bigint NOT NULL, name text)")
    conn.execute("INSERT INTO branch SELECT g, 0, 'b' || g FROM generate_series(1, 3) g")
    # a table with a trigger of its own: its copies are written by pgfleet's trigger at COMMIT
    conn.execute("CREATE TABLE zone (id int PRIMARY KEY, total bigint NOT NULL)")
    conn.execute("INSERT INTO zone SELECT g, 0 FROM generate_series(1, 3) g")
    conn.execute("CREATE FUNCTION zone_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$")
    conn.execute("CREATE TRIGGER zone_touch BEFORE UPDATE ON zone FOR EACH ROW EXECUTE FUNCTION zone_touch()")
    conn.execute("CREATE TABLE journal (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)")  # plain
    fleet.distribute(DistributeSpec(QualifiedName(schema, "acct"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "branch")))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "zone")))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, tables: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def copies(fleet: Fleet, schema: str, query: str, table: str = "branch") -> set[tuple[object, ...]]:
    """The distinct answers of ``query`` on every worker's copy of ``table`` (``{copy}`` in it)."""
    topo = fleet.topology()
    [dist] = [t for t in topo.tables if t.name == QualifiedName(schema, table)]
    rows: set[tuple[object, ...]] = set()
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            statement = sql.SQL(query).format(copy=sql.Identifier(shard.shard_schema, shard.shard_table))
            rows.update(tuple(r) for r in w.execute(statement).fetchall())
    return rows


def state(direct: psycopg.Connection[Any]) -> tuple[Any, ...]:
    rows = run(direct, "SELECT (SELECT sum(balance) FROM acct), (SELECT sum(total) FROM branch), "
                       "(SELECT string_agg(name, ',' ORDER BY id) FROM branch)")
    assert rows is not None
    return rows[0]


def test_reference_write_after_a_worker_write_commits_everywhere(cluster: LocalCluster, fleet: Fleet,
                                                                  router: RouterServer, tables: str) -> None:
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance - 7 WHERE id = 3")
        run(conn, "UPDATE acct SET balance = balance - 3 WHERE id = 11")  # likely another worker
        run(conn, "UPDATE branch SET total = total + 10 WHERE id = 2")
        run(conn, "INSERT INTO branch VALUES (4, 0, 'four')")
        assert run(conn, "SELECT balance FROM acct WHERE id = 3") == [(93,)]
        # the copies were written in the transaction: a statement on a worker sees the write
        assert run(conn, "SELECT a.balance, b.total FROM acct a, branch b WHERE a.id = 3 AND b.id = 2") == [(93, 10)]
        assert state(direct) == (ACCOUNTS * 100, 0, "b1,b2,b3")  # nothing visible before COMMIT
        run(conn, "COMMIT")
        assert state(direct) == (ACCOUNTS * 100 - 10, 10, "b1,b2,b3,four")
        assert copies(fleet, tables, "SELECT sum(total), count(*) FROM {copy}") == {(10, 4)}
        stats = router.context.stats
        assert stats.coordinator_parts == 2 and stats.reference_copies_written == 2 and stats.two_phase_commits == 1
        # ROLLBACK undoes both sides
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance - 5 WHERE id = 3")
        run(conn, "UPDATE branch SET total = total + 5 WHERE id = 1")
        run(conn, "ROLLBACK")
        # a savepoint rolled back takes the reference write with it
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 3")
        run(conn, "SAVEPOINT s")
        run(conn, "UPDATE branch SET total = total + 100 WHERE id = 1")
        run(conn, "ROLLBACK TO SAVEPOINT s")
        run(conn, "UPDATE branch SET total = total + 1 WHERE id = 1")
        run(conn, "COMMIT")
        assert state(direct) == (ACCOUNTS * 100 - 9, 11, "b1,b2,b3,four")
        assert copies(fleet, tables, "SELECT sum(total) FROM {copy}") == {(11,)}
        # not deterministic (now() differs between nodes): the router writes the copies with the rows the
        # coordinator's trigger queued for them, in the transaction too
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 3")
        run(conn, "UPDATE branch SET name = to_char(now(), 'YYYY') WHERE id = 4")
        assert run(conn, "SELECT b.name FROM acct a, branch b WHERE a.id = 3 AND b.id = 4") == [(time.strftime("%Y"),)]
        run(conn, "COMMIT")
        assert copies(fleet, tables, "SELECT name FROM {copy} WHERE id = 4") == {(time.strftime("%Y"),)}
        assert router.context.stats.reference_copies_written == 6  # 2 + 1 (rolled back) + 2 + 1
        assert direct.execute("SELECT count(*) FROM pgfleet.ddl_queue").fetchone() == (0,)
    assert prepared_everywhere(cluster) == 0


def on_w2(cluster: LocalCluster, fleet: Fleet, schema: str, table: str, statement: str) -> None:
    """Run ``statement`` on w2 with ``{copy}`` as w2's copy of ``table``, behind pgfleet's back."""
    [dist] = [t for t in fleet.topology().tables if t.name == QualifiedName(schema, table)]
    [(copy_schema, copy_table)] = {(s.shard_schema, s.shard_table) for s in dist.shards if s.node == "w2"}
    w2 = cluster.endpoint("w2")
    with psycopg.connect(host=w2.host, port=w2.port, user=w2.user, password=w2.password, dbname=w2.dbname,
                         autocommit=True) as worker:
        worker.execute(sql.SQL(statement).format(copy=sql.Identifier(copy_schema, copy_table)))


@pytest.mark.parametrize("table", ["branch", "zone"])
def test_a_copy_that_refuses_the_write_rolls_everything_back(cluster: LocalCluster, fleet: Fleet,
                                                             router: RouterServer, tables: str, table: str) -> None:
    """branch: the router writes the copies, w2's refuses at the UPDATE; zone: its trigger queues the rows,
    w2's copy refuses them at COMMIT. Either way nothing is applied anywhere."""
    on_w2(cluster, fleet, tables, table, "ALTER TABLE {copy} ADD CONSTRAINT small CHECK (total < 1000)")
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        run(conn, "BEGIN")
        for key in range(1, ACCOUNTS + 1):  # every worker is a participant
            run(conn, f"UPDATE acct SET balance = balance + 1 WHERE id = {key}")
        if table == "branch":
            with pytest.raises(psycopg.errors.CheckViolation, match="small"):
                run(conn, "UPDATE branch SET total = 5000 WHERE id = 1")
            run(conn, "ROLLBACK")
        else:
            run(conn, "UPDATE zone SET total = 5000 WHERE id = 1")
            with pytest.raises(psycopg.errors.CheckViolation, match="w2"):
                run(conn, "COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert run(direct, f"SELECT sum(balance), (SELECT sum(total) FROM {table}) FROM acct") == [(ACCOUNTS * 100, 0)]
        assert copies(fleet, tables, "SELECT sum(total) FROM {copy}", table) == {(0,)}
        assert prepared_everywhere(cluster) == 0
        assert run(conn, "SELECT balance FROM acct WHERE id = 1") == [(100,)]  # the session goes on


def test_copies_that_differ_are_not_written(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                            tables: str) -> None:
    on_w2(cluster, fleet, tables, "branch", "DELETE FROM {copy} WHERE id = 3")  # w2's copy lost a row
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 1")
        with pytest.raises(psycopg.errors.InternalError_, match=r"differ.*UPDATE 1.*w2 UPDATE 0"):
            run(conn, "UPDATE branch SET total = 7 WHERE id = 3")
        run(conn, "ROLLBACK")
        assert state(direct) == (ACCOUNTS * 100, 0, "b1,b2,b3")


def test_reading_the_written_table_on_a_worker_is_refused(cluster: LocalCluster, router: RouterServer,
                                                          tables: str) -> None:
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 2")
        run(conn, "UPDATE zone SET total = total + 1 WHERE id = 1")  # written by its trigger at COMMIT
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="wrote reference table") as caught:
            run(conn, "SELECT a.balance, z.total FROM acct a, zone z WHERE a.id = 2 AND z.id = 1")
        assert caught.value.diag.message_hint
        run(conn, "ROLLBACK")
        # a write that reads a distributed table is still refused after a worker write (it would not see it)
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 2")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs the coordinator"):
            run(conn, "UPDATE branch SET total = (SELECT sum(balance) FROM acct) WHERE id = 1")
        run(conn, "ROLLBACK")
        assert state(direct) == (ACCOUNTS * 100, 0, "b1,b2,b3")


def test_extended_protocol_reference_write(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                           tables: str) -> None:
    with connect(cluster, router.config.port, tables) as conn:
        conn.autocommit = False
        for _ in range(3):  # prepared on the third run (psycopg's prepare_threshold)
            conn.execute("UPDATE acct SET balance = balance - %s WHERE id = %s", (2, 4))
            conn.execute("UPDATE branch SET total = total + %s WHERE id = %s", (2, 3))
            conn.commit()
    with connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        assert state(direct) == (ACCOUNTS * 100 - 6, 6, "b1,b2,b3")
    assert copies(fleet, tables, "SELECT total FROM {copy} WHERE id = 3") == {(6,)}
    assert router.context.stats.coordinator_parts == router.context.stats.reference_copies_written == 3


def test_a_role_without_the_privilege_gets_permission_denied(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                             tables: str) -> None:
    conn = fleet.conn()
    with login_role(fleet, f"{tables}_clerk"[:60]) as role:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(tables), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON acct TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON branch TO {}").format(sql.Identifier(role)))
        time.sleep(1.5)  # the router's next refresh copies the role to the workers
        with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=role,
                             password="pw", autocommit=True, options=f"-c search_path={tables}") as clerk:
            run(clerk, "BEGIN")
            run(clerk, "UPDATE acct SET balance = balance + 1 WHERE id = 2")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                run(clerk, "UPDATE branch SET total = total + 1 WHERE id = 1")
            run(clerk, "ROLLBACK")
        assert router.context.stats.coordinator_parts == 1


def test_pgbench_tpcb_with_reference_branches_and_tellers(cluster: LocalCluster, fleet: Fleet,
                                                          router: RouterServer) -> None:
    """Issue 9's second TPC-B row: branches and tellers are reference tables, accounts and history are
    distributed. Every transaction writes a worker first, then both reference tables: none fails, money
    adds up on the coordinator and on every copy."""
    pgbench = [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-U", cluster.spec.superuser]
    env = {"PGPASSWORD": cluster.spec.coordinator.password, "PGDATABASE": cluster.spec.dbname}
    conn = fleet.conn()
    drop = "DROP TABLE IF EXISTS public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, " \
           "public.pgbench_history"
    conn.execute(drop)
    run_proc([*pgbench, "-p", str(cluster.spec.coordinator.port), "-i", "-q", "-s", "2"], env=env, timeout=120,
             what="pgbench -i")
    try:
        for table in ("accounts", "history"):
            fleet.distribute(DistributeSpec(QualifiedName("public", f"pgbench_{table}"), "aid", HashSpec(4)))
        for table in ("branches", "tellers"):
            fleet.reference(ReferenceSpec(QualifiedName("public", f"pgbench_{table}")))
        time.sleep(2.5)  # the router reads the catalog every 2 s
        router.context.routing.refresh()  # type: ignore[union-attr]
        total = 0
        for mode in ("simple", "prepared"):
            out = run_proc([*pgbench, "-p", str(router.config.port), "-n", "-M", mode, "-c", "4", "-j", "2",
                            "-T", "3"], env=env, timeout=120, what="pgbench").stdout
            numbers = pgbench_numbers(out)
            assert numbers["transactions"] > 20 and numbers.get("failed", 0) == 0, out
            total += int(numbers["transactions"])
        stats = router.context.stats
        assert stats.coordinator_parts == stats.reference_copies_written >= 2 * total
        sums = conn.execute("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                            "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) "
                            "FROM pgbench_history), (SELECT count(*) FROM pgbench_history)").fetchone()
        assert sums is not None and sums[0] == sums[1] == sums[2] == sums[3] and sums[4] >= total
        assert copies(fleet, "public", "SELECT sum(tbalance) FROM {copy}", "pgbench_tellers") == {(sums[2],)}
        assert prepared_everywhere(cluster) == 0
    finally:
        conn.execute(drop)


def test_a_coordinator_table_written_after_worker_writes_joins_too(cluster: LocalCluster, router: RouterServer,
                                                                   tables: str) -> None:
    """pgbench's TPC-B with pgbench_history left on the coordinator: a plain table of the coordinator's,
    written after the workers, commits with them (or not at all)."""
    with connect(cluster, router.config.port, tables) as conn, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        for end in ("ROLLBACK", "COMMIT"):
            run(conn, "BEGIN")
            run(conn, "UPDATE acct SET balance = balance - 1 WHERE id = 5")
            run(conn, "UPDATE branch SET total = total + 1 WHERE id = 1")
            assert run(conn, f"INSERT INTO journal (note) VALUES ('{end}') RETURNING note") == [(end,)]
            run(conn, end)
        assert state(direct) == (ACCOUNTS * 100 - 1, 1, "b1,b2,b3")
        assert run(direct, "SELECT note FROM journal") == [("COMMIT",)]
        # a plain table with a trigger of its own could do anything there: refused after worker writes
        run(direct, "CREATE TRIGGER zone_touch BEFORE UPDATE ON journal FOR EACH ROW EXECUTE FUNCTION zone_touch()")
        time.sleep(2.5)  # the router's next refresh
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance - 1 WHERE id = 5")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs the coordinator"):
            run(conn, "INSERT INTO journal (note) VALUES ('no')")
        run(conn, "ROLLBACK")
    assert prepared_everywhere(cluster) == 0


def test_reads_of_reference_and_coordinator_tables_after_worker_writes(cluster: LocalCluster, router: RouterServer,
                                                                    tables: str) -> None:
    """An ORM that looks up a row of a reference table after writing a distributed one, in one transaction:
    the coordinator answers as a participant and sees the transaction's own writes there."""
    with connect(cluster, router.config.port, tables) as conn:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance - 1 WHERE id = 5")
        assert run(conn, "SELECT name FROM branch WHERE id = 2") == [("b2",)]
        run(conn, "UPDATE zone SET total = 9 WHERE id = 1")  # its copies change at COMMIT
        assert run(conn, "SELECT z.total, b.name FROM zone z JOIN branch b USING (id) WHERE id = 1") == [(9, "b1")]
        run(conn, "INSERT INTO journal (note) VALUES ('x')")
        assert run(conn, "SELECT count(*), 1 + 1 FROM journal") == [(1, 2)]
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="needs the coordinator"):
            run(conn, "SELECT count(*) FROM acct a JOIN journal j ON j.id = a.id")  # a distributed table too
        run(conn, "ROLLBACK")
    assert router.context.stats.coordinator_parts == 5


def test_a_trigger_from_before_leaves_the_copies_to_its_queue(cluster: LocalCluster, fleet: Fleet,
                                                              router: RouterServer, tables: str) -> None:
    """A coordinator whose trigger predates pgfleet.copies_written would queue the rows of a statement the
    router writes on the copies too: the router does not run the statement there, it takes the rows the
    trigger queued."""
    conn = fleet.conn()
    row = conn.execute("SELECT pg_get_functiondef('pgfleet.reference_replicate()'::regprocedure)").fetchone()
    assert row is not None
    source = str(row[0])
    older = re.sub(r"    -- The router wrote every copy.*?\n    END IF;\n", "", source, flags=re.S)
    assert older != source and "copies_written" not in older
    routing = router.context.routing
    assert routing is not None
    try:
        conn.execute(older.encode())
        routing.refresh()
        with connect(cluster, router.config.port, tables) as client:
            run(client, "BEGIN")
            run(client, "UPDATE acct SET balance = balance + 1 WHERE id = 1")
            run(client, "INSERT INTO branch VALUES (7, 7, 'seven')")
            assert run(client, "SELECT b.total FROM acct a, branch b WHERE a.id = 1 AND b.id = 7") == [(7,)]
            run(client, "COMMIT")
        assert router.context.stats.coordinator_parts == 1 and router.context.stats.reference_copies_written == 1
        assert copies(fleet, tables, "SELECT total FROM {copy} WHERE id = 7") == {(7,)}
    finally:
        conn.execute(source.encode())
        routing.refresh()


# --- pure: which statements join, which are refused ---------------------------------------------------
def topology() -> RoutingTopology:
    copies = tuple(Shard(shard_id=i, table_oid=1, index=0, node=node, shard_schema="public", shard_table="branch",
                         foreign_schema="", foreign_table="") for i, node in enumerate(("w2", "w1")))
    ref = RoutedTable(oid=1, name=QualifiedName("public", "branch"), method="reference", key=None, colocation_id=None,
                      shards=copies, columns=("id", "total", "name"), statement_copies=True)
    dist = RoutedTable(oid=2, name=QualifiedName("public", "acct"), method="hash", key="id", colocation_id=1)
    return RoutingTopology(tables=(ref, dist), relations=frozenset({("public", "plain"), ("public", "branch_view"),
                                                                   ("public", "hist")}),
                           local_tables=frozenset({("public", "hist")}))


@pytest.mark.parametrize(("statement", "joins"), [
    ("UPDATE branch SET total = total + 1 WHERE id = 1", "copies"),
    ("UPDATE public.branch SET total = $1 WHERE id = $2", "copies"),
    ("INSERT INTO branch VALUES (9, 0, upper('x')) ON CONFLICT (id) DO UPDATE SET total = excluded.total", "copies"),
    ("DELETE FROM branch b WHERE b.id IN (SELECT id FROM branch WHERE total < 0)", "copies"),
    ("INSERT INTO branch (name, id, total) VALUES ('a', 1, 2), ('b', 2, 3)", "copies"),
    ("INSERT INTO branch (id, total) VALUES (1, 2)", "trigger"),  # name takes its default on each node
    ("INSERT INTO branch VALUES (1, 2)", "trigger"),
    ("INSERT INTO branch VALUES (1, 2, DEFAULT)", "trigger"),
    ("INSERT INTO branch SELECT id + 10, total, name FROM branch", "trigger"),
    ("UPDATE branch SET name = to_char(now(), 'YYYY')", "trigger"),  # the clock of each node
    ("UPDATE branch SET name = CURRENT_DATE::text", "trigger"),
    ("UPDATE branch SET total = DEFAULT", "trigger"),
    ("UPDATE branch SET total = (SELECT total FROM branch LIMIT 1)", "trigger"),  # which row: each copy's order
    ("UPDATE branch SET name = (SELECT string_agg(name, ',') FROM branch)", "trigger"),
    ("UPDATE branch SET total = (SELECT sum(balance) FROM acct)", False),  # reads a distributed table
    ("UPDATE branch SET total = 1 FROM plain WHERE plain.id = branch.id", False),  # a coordinator-only table
    ("UPDATE acct SET balance = 1", False),
    ("UPDATE branch SET name = pg_sleep(1)::text", False),  # a function with side effects
    ("UPDATE branch SET total = 1 WHERE id = nextval('s')", False),
    ("WITH x AS (SELECT 1) UPDATE branch SET total = 1", False),
    ("UPDATE branch SET total = 1; UPDATE branch SET total = 2", False),
    ("UPDATE branch SET total = (SELECT count(*) FROM hist)", "trigger"),  # the copies have no hist
    ("INSERT INTO hist VALUES (1, now())", "local"),
    ("DELETE FROM hist h USING branch b WHERE h.id = b.id", "local"),
    ("INSERT INTO hist SELECT * FROM acct", False),  # reads a distributed table
    ("INSERT INTO plain VALUES (1)", False),  # a relation with triggers or rules of its own, or a view
    ("SELECT b.name, h.id FROM branch b JOIN hist h USING (id) WHERE upper(b.name) = 'X'", "read"),
    ("SELECT 1", "read"),
    ("SELECT * FROM branch, acct", False),
    ("SELECT nextval('s')", False),
    ("SELECT * INTO newtab FROM branch", False),
])
def test_which_statements_the_coordinator_joins_for(statement: str, joins: str | bool) -> None:
    found = coordinator_part(statement, topology(), ("public",))
    if not joins:
        assert found is None
    elif joins == "read":
        assert found is not None and found.reads and not found.copies
    elif joins == "local":
        assert found is not None and found.local and found.table == ("public", "hist") and not found.copies
    else:
        assert found is not None and found.table == ("public", "branch") and found.oid == 1 and not found.local
        assert found.copies == (("w1", "w2") if joins == "copies" else ())


def test_reads_table_finds_the_written_table() -> None:
    written = frozenset({("public", "branch")})
    assert reads_table("SELECT * FROM acct a JOIN branch b ON true WHERE a.id = 1", written) == ("public", "branch")
    assert reads_table("SELECT * FROM public.branch", written) == ("public", "branch")
    assert reads_table("SELECT * FROM other.branch", written) is None
    assert reads_table("SELECT * FROM acct WHERE id = 1", written) is None


def test_the_verdict_is_kept_by_the_statement_without_its_constants() -> None:
    cache = PreparedCache()
    topo = topology()
    first = cache.reference_write("UPDATE branch SET total = total + 5 WHERE id = 1", topo, ("public",))
    again = cache.reference_write("UPDATE branch SET total = total + 70 WHERE id = 2", topo, ("public",))
    assert first is not None and again is first and len(cache._writes) == 1
    assert cache.reference_write("UPDATE branch SET name = 'x' WHERE id = 1", topo, ("public",)) is not None
    assert cache.reference_write("UPDATE acct SET balance = 1 WHERE id = 1", topo, ("public",)) is None
    assert len(cache._writes) == 3
    assert cache.reference_write("UPDATE branch SET total = 1", RoutingTopology(tables=()), ("public",)) is None
    assert len(cache._writes) == 1  # a new topology: the old verdicts are gone
