"""Writes to a reference table reach every copy at COMMIT, touching only the written rows.

Each copy is written over its own READ COMMITTED connection with a two-phase commit, so concurrent
writers of different rows both commit, and a failure anywhere applies nothing anywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pgfleet.pgbench import run_pgbench
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

Rows = list[tuple[object, ...]]

# Values whose text survives only an exact round trip: quotes, %, backslashes, NULLs, floats, time zones.
TABLE = """
CREATE TABLE ref (a int, b text, price numeric, x float8, at timestamptz, doc jsonb, raw bytea, tags text[],
                  PRIMARY KEY (a, b))
"""
SEED = """
INSERT INTO ref VALUES
  (1, 'o''brien', 1.10, 0.1, '2024-01-02 03:04:05.678+02', '{"k": [1, "two"]}', '\\x00ff', '{a,"b c"}'),
  (2, '100%', NULL, 1e-300, NULL, 'null', NULL, NULL),
  (3, 'back\\slash', 123456789012345678901234567890.5, 'Infinity', 'infinity', '"str"', '\\x', '{}')
"""


def _sorted(conn: psycopg.Connection[tuple[object, ...]], table: sql.Composable) -> Rows:
    return conn.execute(sql.SQL("SELECT t::text FROM {} t ORDER BY t::text").format(table)).fetchall()


def _copies(fleet: Fleet, schema: str, table: str) -> dict[str, Rows]:
    out = {}
    for w in fleet.topology().workers:
        with fleet.worker_conn(w) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            out[w.name] = _sorted(conn, sql.Identifier(schema, table))
    return out


def _assert_copies_equal(fleet: Fleet, schema: str, table: str = "ref") -> Rows:
    with fleet.new_coordinator_conn() as conn:  # the test's own session may have changed its settings
        conn.execute("SET TimeZone = 'UTC'")
        local = _sorted(conn, sql.Identifier(schema, table))
    assert _copies(fleet, schema, table) == {w.name: local for w in fleet.topology().workers}
    return local


def _prepared_xacts(fleet: Fleet) -> dict[str, Rows]:
    """Per worker: prepared transactions, and sessions left inside a transaction (both must be none)."""
    out = {}
    for w in fleet.topology().workers:
        with fleet.worker_conn(w) as conn:
            out[w.name] = conn.execute(
                "SELECT gid FROM pg_prepared_xacts UNION ALL SELECT 'open: ' || application_name "
                "FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()").fetchall()
    return out


@pytest.fixture
def second(fleet: Fleet, schema: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Another client session on the coordinator, in the test's schema."""
    conn = fleet.new_coordinator_conn()
    conn.execute(sql.SQL("SET search_path = {}, public").format(sql.Identifier(schema)))
    yield conn
    conn.close()


def _numbered(fleet: Fleet, schema: str, rows: int = 10) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE ref (id int PRIMARY KEY, v int NOT NULL)")
    conn.execute("INSERT INTO ref SELECT g, 0 FROM generate_series(1, %s) g", (rows,))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "ref")))


def test_copies_follow_every_kind_of_write(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute(TABLE)
    conn.execute(SEED)
    fleet.reference(ReferenceSpec(QualifiedName(schema, "ref")))
    conn.execute("SET DateStyle = 'SQL, DMY'")  # the client's settings must not change what the copies get
    conn.execute("SET extra_float_digits = -15")
    conn.execute("SET IntervalStyle = 'sql_standard'")
    conn.execute("SET TimeZone = 'Asia/Kolkata'")
    steps = [
        "INSERT INTO ref (a, b, x, at) VALUES (4, 'four', pi(), now()), (5, 'five', 1/3::float8, NULL)",
        "UPDATE ref SET price = price * 2, tags = tags || 'z'::text WHERE a IN (1, 3)",  # in place
        "UPDATE ref SET a = a + 100 WHERE a = 2",                       # key change
        "UPDATE ref SET a = CASE a WHEN 4 THEN 5 ELSE 4 END, b = 'swapped' WHERE a IN (4, 5)",  # keys swap
        "UPDATE ref SET doc = NULL, raw = NULL WHERE a = 1",
        "UPDATE ref SET x = x WHERE false",                             # touches nothing
        "DELETE FROM ref WHERE a = 3",
        "INSERT INTO ref (a, b) SELECT g, 'bulk ' || g FROM generate_series(1000, 13000) g",  # several batches
        "DELETE FROM ref WHERE a BETWEEN 1000 AND 5000",
        "UPDATE ref SET price = a WHERE a > 9000",
    ]
    for step in steps:
        conn.execute(step.encode())
        _assert_copies_equal(fleet, schema)
    with conn.cursor().copy("COPY ref (a, b, x) FROM STDIN") as cp:
        cp.write("20000\tcopied\t\\N\n")
    assert len(_assert_copies_equal(fleet, schema)) == 3 + 2 + 12001 - 1 - 4001 + 1
    conn.execute("TRUNCATE ref")
    assert _assert_copies_equal(fleet, schema) == []


def test_rolled_back_writes_and_savepoints_reach_no_copy(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema)
    conn = fleet.conn()
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM ref")
        conn.execute("INSERT INTO ref VALUES (99, 99)")
    with conn.transaction():
        conn.execute("UPDATE ref SET v = 1 WHERE id = 1")
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("UPDATE ref SET v = 2 WHERE id = 2")
            conn.execute("INSERT INTO ref VALUES (3, 3)")           # fails: the savepoint rolls back id 2 too
        conn.execute("UPDATE ref SET v = 4 WHERE id = 4")
    with conn.transaction():  # the transaction's first queued rows are rolled back with their savepoint
        with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
            conn.execute("UPDATE ref SET v = 5 WHERE id = 5")
            conn.execute("INSERT INTO ref VALUES (3, 3)")
        conn.execute("UPDATE ref SET v = 6 WHERE id = 6")
    rows = _assert_copies_equal(fleet, schema)
    assert [r[0] for r in rows if not r[0].endswith(",0)")] == ["(1,1)", "(4,4)", "(6,6)"]
    assert conn.execute("SELECT count(*) FROM pgfleet.ddl_queue").fetchone() == (0,)


def test_ddl_and_writes_in_one_transaction_apply_in_order(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema, rows=3)
    conn = fleet.conn()
    with conn.transaction():
        conn.execute("ALTER TABLE ref ADD COLUMN label text")
        conn.execute("UPDATE ref SET label = 'row ' || id WHERE id < 3")
        conn.execute("INSERT INTO ref VALUES (4, 0, 'new')")
    assert _assert_copies_equal(fleet, schema) == [("(1,0,\"row 1\")",), ("(2,0,\"row 2\")",), ("(3,0,)",),
                                                   ("(4,0,new)",)]


def test_concurrent_writers_of_different_rows_both_commit(
        fleet: Fleet, schema: str, second: psycopg.Connection[tuple[object, ...]]) -> None:
    _numbered(fleet, schema)
    first = fleet.conn()
    second.execute("SET statement_timeout = '10s'")  # before the fix: waits on first's locks, then fails
    with first.transaction():
        first.execute("UPDATE ref SET v = v + 1 WHERE id = 1")
        with second.transaction():
            second.execute("UPDATE ref SET v = v + 1 WHERE id = 2")
    assert [r for r in _assert_copies_equal(fleet, schema) if not r[0].endswith(",0)")] == [("(1,1)",), ("(2,1)",)]


def test_concurrent_writers_of_the_same_row_serialize(
        fleet: Fleet, schema: str, second: psycopg.Connection[tuple[object, ...]]) -> None:
    _numbered(fleet, schema)
    first = fleet.conn()
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            second.execute("UPDATE ref SET v = v + 10 WHERE id = 1")  # waits for first's row lock
        except BaseException as exc:
            errors.append(exc)

    with first.transaction():
        first.execute("UPDATE ref SET v = v + 1 WHERE id = 1")
        waiter = threading.Thread(target=bump)
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive()
    waiter.join(30)
    assert not errors
    assert ("(1,11)",) in _assert_copies_equal(fleet, schema)


def test_a_write_locks_only_its_rows_on_the_copies(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema, rows=1000)
    conn = fleet.conn()
    conn.execute("SET statement_timeout = '10s'")
    w1 = fleet.topology().node("w1")
    assert w1 is not None
    with fleet.worker_conn(w1, autocommit=False) as holder:
        holder.execute(sql.SQL("SELECT * FROM {} WHERE id = 500 FOR UPDATE").format(sql.Identifier(schema, "ref")))
        conn.execute("UPDATE ref SET v = 7 WHERE id = 1")  # before the fix: locks every row of the copy, times out
        holder.rollback()
    assert ("(1,7)",) in _assert_copies_equal(fleet, schema)


def test_a_failed_commit_applies_nothing_anywhere(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    _numbered(fleet, schema)
    conn = fleet.conn()
    conn.execute("UPDATE ref SET v = 1 WHERE id = 1")  # the session's links to the workers are now open
    before = _assert_copies_equal(fleet, schema)
    cluster.server("w2").stop(mode="immediate")
    try:
        with pytest.raises(psycopg.OperationalError, match="could not be applied on node w2") as info, conn.transaction():
            conn.execute("UPDATE ref SET v = 2 WHERE id = 2")
            conn.execute("INSERT INTO ref VALUES (11, 11)")
        assert info.value.diag.message_hint and "run the transaction again" in info.value.diag.message_hint
        assert conn.execute("SELECT * FROM ref WHERE id IN (2, 11) ORDER BY id").fetchall() == [(2, 0)]
        with fleet.new_coordinator_conn() as fresh:  # a session that has no link yet: its connect fails
            fresh.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))
            with pytest.raises(psycopg.OperationalError, match="could not be applied on node w2"):
                fresh.execute("DELETE FROM ref WHERE id = 5")
    finally:
        cluster.server("w2").start()
    assert _assert_copies_equal(fleet, schema) == before
    assert _prepared_xacts(fleet) == {"w1": [], "w2": []}
    # w1 was restarted under the session's open link too: the next write reconnects by itself
    cluster.server("w1").stop(mode="immediate")
    cluster.server("w1").start()
    conn.execute("UPDATE ref SET v = 3 WHERE id = 3")
    assert ("(3,3)",) in _assert_copies_equal(fleet, schema)


def test_a_copy_that_rejects_the_write_aborts_the_transaction(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema)
    w2 = fleet.topology().node("w2")
    assert w2 is not None
    with fleet.worker_conn(w2) as wc:  # a copy that diverged: w2 already holds id 50
        wc.execute(sql.SQL("INSERT INTO {} VALUES (50, 50)").format(sql.Identifier(schema, "ref")))
    conn = fleet.conn()
    with pytest.raises(psycopg.errors.UniqueViolation, match="could not be applied on node w2"):
        conn.execute("INSERT INTO ref VALUES (50, 0)")
    assert conn.execute("SELECT count(*) FROM ref WHERE id = 50").fetchone() == (0,)
    assert _copies(fleet, schema, "ref")["w1"] == _sorted(conn, sql.Identifier(schema, "ref"))
    assert _prepared_xacts(fleet) == {"w1": [], "w2": []}


TPCB_OWN_ACCOUNTS = """\\set aid :client_id * 25000 + random(1, 25000)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
"""


def test_pgbench_tpcb_with_reference_branches_and_tellers_has_no_failures(fleet: Fleet, cluster: LocalCluster,
                                                                           schema: str) -> None:
    conn = fleet.conn()
    conn.execute("SET search_path = public")
    conn.execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")
    try:
        # -I dtgp: no VACUUM (it warns on foreign tables); the primary keys identify rows on the copies
        run_pgbench(cluster, "coord", ["-i", "-q", "-I", "dtgp", "-s", "1"])
        for table in ("pgbench_branches", "pgbench_tellers"):
            fleet.reference(ReferenceSpec(QualifiedName("public", table)))
        fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(4)))
        # pgbench_history stays a local table on the coordinator: insert-only, no key to route by.
        # TPC-B-like with every client on its own quarter of the accounts: all of them update the same
        # branch and the same few tellers (reference tables, what this test is about), but never the same
        # account at once, whose UPDATE goes through postgres_fdw in REPEATABLE READ and fails on a
        # concurrent update of that row (postgres_fdw's isolation, the router issue's subject).
        out = run_pgbench(cluster, "coord", ["-n", "-c", "4", "-j", "2", "-T", "4"], script=TPCB_OWN_ACCOUNTS)
        assert out["transactions"] > 50
        assert out["failed"] == 0
        totals = conn.execute("SELECT (SELECT sum(bbalance) FROM pgbench_branches), "
                              "(SELECT sum(tbalance) FROM pgbench_tellers), "
                              "(SELECT sum(delta) FROM pgbench_history)").fetchone()
        assert totals is not None and totals[0] == totals[1] == totals[2]
        for table in ("pgbench_branches", "pgbench_tellers"):
            _assert_copies_equal(fleet, "public", table)
    finally:
        conn.execute("DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history")



def test_a_new_link_settles_prepared_transactions_an_interrupted_commit_left(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema)
    conn = fleet.conn()
    xids = {}
    for fate in ("aborted", "committed"):
        with conn.transaction(force_rollback=fate == "aborted"):
            row = conn.execute("SELECT pg_current_xact_id()").fetchone()
            assert row is not None
            xids[fate] = row[0]
    w1 = fleet.topology().node("w1")
    assert w1 is not None
    copy = sql.Identifier(schema, "ref")
    with fleet.worker_conn(w1, autocommit=False) as wc:  # what a coordinator crash mid-commit leaves behind
        for fate, rid in (("aborted", 21), ("committed", 22)):
            wc.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(copy), (rid, rid))
            wc.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(f"pgfleet_xact_{xids[fate]}_w1")))
    try:
        with fleet.new_coordinator_conn() as fresh:  # a new session opens a new link to w1
            fresh.execute(sql.SQL("UPDATE {} SET v = 1 WHERE id = 1").format(copy))
        assert _prepared_xacts(fleet) == {"w1": [], "w2": []}
        with fleet.worker_conn(w1) as wc:
            assert wc.execute(sql.SQL("SELECT id FROM {} WHERE id > 20").format(copy)).fetchall() == [(22,)]
    finally:  # when the test fails, the leftovers must not block dropping the schema
        with fleet.worker_conn(w1) as wc:
            for (gid,) in wc.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'pgfleet_xact_%'").fetchall():
                wc.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def test_a_role_that_may_write_the_table_cannot_borrow_the_links(fleet: Fleet, schema: str) -> None:
    _numbered(fleet, schema)
    conn = fleet.conn()
    conn.execute("DROP ROLE IF EXISTS pgfleet_test_app")
    conn.execute("CREATE ROLE pgfleet_test_app")
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO pgfleet_test_app").format(sql.Identifier(schema)))
        conn.execute("GRANT SELECT, UPDATE ON ref TO pgfleet_test_app")
        conn.execute("GRANT USAGE ON SCHEMA pgfleet TO pgfleet_test_app")  # even with the catalog visible
        conn.execute("SET ROLE pgfleet_test_app")
        conn.execute("UPDATE ref SET v = 8 WHERE id = 8")  # the session's links to the workers are open now
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT dblink_exec('pgfleet_w1', 'CREATE ROLE intruder SUPERUSER')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT pgfleet.link_send('w1', 'CREATE ROLE intruder SUPERUSER', false)")
        conn.execute("RESET ROLE")
        assert ("(8,8)",) in _assert_copies_equal(fleet, schema)
    finally:
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("DROP OWNED BY pgfleet_test_app"))
        conn.execute("DROP ROLE pgfleet_test_app")


def _noted_statements(conn: psycopg.Connection[tuple[object, ...]], node: str) -> list[str]:
    """The prepared statements the session believes its link to ``node`` has."""
    row = conn.execute("SELECT current_setting(%s, true)", (f"pgfleet.prepared_{node}",)).fetchone()
    return sorted((row[0] or "").split()) if row else []


def test_each_write_shape_is_prepared_once_per_link_and_a_stale_note_is_repaired(
        fleet: Fleet, schema: str, second: psycopg.Connection[tuple[object, ...]]) -> None:
    _numbered(fleet, schema)
    second.execute("UPDATE ref SET v = 1 WHERE id = 1")  # opens the links and prepares the UPDATE's shape
    update = _noted_statements(second, "w1")
    assert len(update) == 1 and update[0].startswith("pgfleet_") and _noted_statements(second, "w2") == update
    second.execute("UPDATE ref SET v = 2 WHERE id = 2")  # the same shape: EXECUTE only
    assert _noted_statements(second, "w1") == update
    # a note that claims too little: the link gets PREPARE for a name it has (42P05), and a new link
    second.execute("SET pgfleet.prepared_w1 = ''")
    second.execute("UPDATE ref SET v = 3 WHERE id = 3")
    assert _noted_statements(second, "w1") == update
    # a note that claims too much: the link gets EXECUTE for a name it lacks (26000), and a new link
    other = fleet.conn()
    other.execute("DELETE FROM ref WHERE id = 9")
    delete = [name for name in _noted_statements(other, "w2") if name not in update]
    assert len(delete) == 1
    second.execute("SELECT set_config('pgfleet.prepared_w2', current_setting('pgfleet.prepared_w2') || ' ' || %s, false)",
                   (delete[0],))
    second.execute("DELETE FROM ref WHERE id = 10")
    assert _noted_statements(second, "w2") == delete  # the new link has prepared only what it ran
    # a changed column list is a new shape, prepared on first use
    before = _noted_statements(second, "w1")
    second.execute("ALTER TABLE ref ADD COLUMN note text")
    second.execute("UPDATE ref SET note = 'n' WHERE id = 4")
    assert len(set(_noted_statements(second, "w1")) - set(before)) == 1
    assert ("(4,0,n)",) in _assert_copies_equal(fleet, schema)
    assert _prepared_xacts(fleet) == {"w1": [], "w2": []}
