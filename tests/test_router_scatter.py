"""Scatter/gather reads through the router, compared with the same statements on one plain table with the
same rows on the coordinator: rows, column names and types, command tags, errors."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import connect, routing_router
from psycopg import sql
from test_roles import drop_role
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

pytestmark = pytest.mark.cluster

COLUMNS = "id bigint, grp int, val numeric(10, 2), n int, big bigint, flag boolean, note text, ratio float8"
ROWS = ("SELECT g, CASE WHEN g % 11 = 0 THEN NULL ELSE g % 7 END, CASE WHEN g % 5 = 0 THEN NULL ELSE g / 3.0 END, "
        "g % 13 - 6, g * 1000000000000, g % 3 = 0, CASE WHEN g % 9 = 0 THEN NULL ELSE 'n' || (g % 17) END, g / 8.0 "
        "FROM generate_series(1, 400) g")


@pytest.fixture
def data(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    for name in ("t", "t_plain", "e", "e_plain"):
        conn.execute(f"CREATE TABLE {name} ({COLUMNS})")
    conn.execute(f"INSERT INTO t {ROWS}")
    conn.execute(f"INSERT INTO t_plain {ROWS}")
    conn.execute("CREATE TABLE lines (id bigint, qty int)")
    conn.execute("INSERT INTO lines SELECT g % 400 + 1, g FROM generate_series(1, 900) g")
    conn.execute("CREATE TABLE lines_plain AS SELECT * FROM lines")
    conn.execute("CREATE TABLE grps (grp int PRIMARY KEY, label text)")
    conn.execute("INSERT INTO grps SELECT g, 'label ' || (g % 4) FROM generate_series(0, 6) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "e"), "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "lines"), "id", colocate_with=QualifiedName(schema, "t")))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "grps")))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, data: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def run(conn: psycopg.Connection[Any], statement: str, ordered: bool) -> tuple[Any, ...]:
    cur = psycopg.ClientCursor(conn)  # the simple protocol, as psql sends it
    try:
        cur.execute(statement)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)
    rows = cur.fetchall()
    if not ordered:
        rows = sorted(rows, key=repr)
    return rows, [(d.name, d.type_code) for d in cur.description or []], cur.statusmessage


# (statement with {t} for the table, the rows' order is defined)
STATEMENTS = [
    ("SELECT count(*) FROM {t}", True),
    ("SELECT count(*), count(grp), sum(n), sum(big), sum(val), min(note), max(val), avg(n), avg(big), avg(val), "
     "bool_and(flag), bool_or(flag), every(flag) FROM {t}", True),
    ("SELECT grp, count(*), sum(val), avg(n) AS mean FROM {t} GROUP BY grp ORDER BY grp NULLS FIRST", True),
    ("SELECT grp, count(*) FROM {t} WHERE n > 0 GROUP BY 1 HAVING sum(n) > 30 ORDER BY 2 DESC, 1", True),
    ("SELECT note, max(id) - min(id) AS spread, sum(ratio) FROM {t} GROUP BY note "
     "ORDER BY note DESC NULLS LAST LIMIT 5 OFFSET 1", True),
    ("SELECT grp % 2 AS parity, flag, count(*) FILTER (WHERE note IS NULL) FROM {t} GROUP BY grp % 2, flag", False),
    ("SELECT count(*) + 1, sum(n) * 2, avg(n)::numeric(10, 3), coalesce(max(note), 'none') FROM {t} WHERE id < 0", True),
    ("SELECT grp, avg(val) FROM {t} WHERE id < 0 GROUP BY grp", False),
    ("SELECT count(*) FROM {t} LIMIT 0", True),
    ("SELECT g.label, count(*), sum(t.n) FROM {t} t JOIN grps g ON g.grp = t.grp GROUP BY g.label ORDER BY g.label", True),
    ("SELECT t.grp, sum(l.qty), count(l.qty) FROM {t} t LEFT JOIN {lines} l ON l.id = t.id GROUP BY t.grp ORDER BY 1", True),
    ("SELECT * FROM {t} WHERE n = 3", False),
    ("SELECT id, note FROM {t} WHERE note = 'n5'", False),
    ("SELECT id, val FROM {t} ORDER BY val DESC NULLS LAST, id LIMIT 7 OFFSET 3", True),
    ("SELECT grp FROM {t} ORDER BY grp NULLS FIRST LIMIT 20", True),  # ties: only the sort key is shown
    ("SELECT note FROM {t} ORDER BY note LIMIT 30", True),
    ("SELECT id FROM {t} ORDER BY note DESC, id LIMIT 10", True),
    ("SELECT id FROM {t} LIMIT 0", True),
    ("SELECT id, grp, note FROM {t} ORDER BY grp NULLS FIRST, note DESC, id", True),  # no LIMIT: merged whole
    ("SELECT * FROM {t} WHERE n > 2 ORDER BY ratio DESC, id", True),
    ("SELECT t.id, g.label FROM {t} t JOIN grps g ON g.grp = t.grp ORDER BY g.label, t.id", True),
    ("SELECT sum(n) / 0 FROM {t}", True),
    ("SELECT 1 / (n - n) FROM {t}", False),
]


@pytest.mark.parametrize("table", ["t", "e"])
def test_scatter_reads_match_one_plain_table(cluster: LocalCluster, router: RouterServer, data: str, table: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for statement, ordered in STATEMENTS:
            if table == "e" and "{lines}" in statement:
                continue  # e is not co-located with lines
            before = stats.routed
            got = run(via_router, statement.format(t=table, lines="lines"), ordered)
            want = run(direct, statement.format(t=f"{table}_plain", lines="lines_plain"), ordered)
            assert got == want, statement
            if got[0] != "error":
                assert stats.routed == before + 1, f"not run by the router: {statement}"


def test_a_column_with_another_collation_is_read_by_the_coordinator(fleet: Fleet, cluster: LocalCluster,
                                                                   data: str) -> None:
    conn = fleet.conn()
    conn.execute('CREATE TABLE c (id bigint, name text COLLATE "C")')
    conn.execute("INSERT INTO c SELECT g, chr(64 + g % 3 * 32 + g % 26) FROM generate_series(1, 60) g")
    conn.execute("CREATE TABLE c_plain AS SELECT * FROM c")
    fleet.distribute(DistributeSpec(QualifiedName(data, "c"), "id", HashSpec(4)))
    with routing_router(cluster) as server, connect(cluster, server.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for statement in ("SELECT name FROM {t} ORDER BY name LIMIT 20", "SELECT min(name), max(name) FROM {t}"):
            before = server.context.stats.routed
            got = run(via_router, statement.format(t="c"), True)
            assert got == run(direct, statement.format(t="c_plain"), True), statement
            assert server.context.stats.routed == before, statement  # the coordinator ran it


DESCRIBED = [
    "SELECT * FROM t WHERE n > 2",  # streamed
    "SELECT grp, val, count(*), sum(val) FROM t GROUP BY grp, val ORDER BY 1, 2 LIMIT 5",  # combined
    "SELECT id, val, note FROM t ORDER BY val DESC NULLS LAST, id LIMIT 4",  # merged
    "SELECT t.id, g.label, l.qty FROM t JOIN grps g ON g.grp = t.grp JOIN lines l ON l.id = t.id ORDER BY 3, 1 LIMIT 3",
]


def test_row_descriptions_are_the_coordinators(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """Table oids, attribute numbers and type modifiers (``numeric(10, 2)``) as the coordinator describes the
    same statement over the same distributed tables, in autocommit and in a transaction on the workers."""
    def described(conn: psycopg.Connection[Any], statement: str) -> list[tuple[int, int, int, int]]:
        result = conn.pgconn.exec_(statement.encode())  # the simple protocol, as psql sends it
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK, result.error_message
        return [(result.ftype(i), result.ftable(i), result.ftablecol(i), result.fmod(i)) for i in range(result.nfields)]

    stats = router.context.stats
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        for statement in DESCRIBED:
            want = described(direct, statement)
            assert any(table for _, table, _, _ in want), statement
            before = stats.routed
            assert described(via_router, statement) == want, statement
            assert stats.routed == before + 1, statement
            via_router.pgconn.exec_(b"BEGIN")
            described(via_router, "SELECT n FROM t WHERE id = 1")  # the transaction runs on a worker
            assert described(via_router, statement) == want, f"in a transaction: {statement}"
            via_router.pgconn.exec_(b"COMMIT")
        assert stats.coordinator_transactions == 0


def test_values_and_types_are_the_servers(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    with connect(cluster, router.config.port, data) as conn:
        cur = psycopg.ClientCursor(conn)
        cur.execute("SELECT count(*), sum(n), sum(big), avg(n), avg(id) FROM t WHERE id <= 3")
        assert cur.fetchone() == (3, 3 % 13 - 6 + 2 % 13 - 6 + 1 % 13 - 6, 6000000000000, Decimal("-4.0000000000000000"),
                                  Decimal("2.0000000000000000"))
        assert [d.type_code for d in cur.description or []] == [20, 20, 1700, 1700, 1700]
        cur.execute("SELECT count(*), sum(n), avg(n) FROM e")
        assert cur.fetchone() == (0, None, None)


AGGREGATE = st.sampled_from(["count(*)", "count(grp)", "sum(n)", "sum(val)", "sum(big)", "min(note)", "max(val)",
                             "avg(n)", "avg(val)", "bool_or(flag)", "min(id)", "max(note)"])
GROUPS = st.lists(st.sampled_from(["grp", "flag", "note", "n % 3"]), max_size=2, unique=True)
WHERE = st.sampled_from(["", " WHERE n > 0", " WHERE note IS NULL", " WHERE val < 50", " WHERE id < 0"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aggregates=st.lists(AGGREGATE, min_size=1, max_size=3), groups=GROUPS, where=WHERE,
       having=st.booleans(), limit=st.sampled_from([None, 0, 1, 3]))
def test_random_aggregates_match_one_plain_table(cluster: LocalCluster, router: RouterServer, data: str,
                                                 aggregates: list[str], groups: list[str], where: str,
                                                 having: bool, limit: int | None) -> None:
    targets = ", ".join(groups + aggregates)
    statement = f"SELECT {targets} FROM {{t}}{where}"
    if groups:
        statement += " GROUP BY " + ", ".join(groups)
    if having:
        statement += " HAVING count(*) > 2"
    positions = range(1, len(groups) + len(aggregates) + 1)
    statement += " ORDER BY " + ", ".join(f"{i} NULLS FIRST" for i in positions)
    if limit is not None:
        statement += f" LIMIT {limit}"
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        before = router.context.stats.routed
        got = run(via_router, statement.format(t="t"), True)
        assert router.context.stats.routed == before + 1, statement
        assert got == run(direct, statement.format(t="t_plain"), True), statement


ROLE, PASSWORD = "pgfleet_test_scatter", "scatter pw 1"


def test_a_role_reads_with_its_privileges(fleet: Fleet, cluster: LocalCluster, data: str) -> None:
    conn = fleet.conn()
    drop_role(fleet, ROLE)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(data), sql.Identifier(ROLE)))
        conn.execute(sql.SQL("GRANT SELECT ON t, t_plain TO {}").format(sql.Identifier(ROLE)))
        with routing_router(cluster) as server:
            stats = server.context.stats
            info = dict(host="127.0.0.1", dbname=cluster.spec.dbname, user=ROLE, password=PASSWORD, autocommit=True,
                        options=f"-c search_path={data}")
            with psycopg.connect(port=server.config.port, **info) as via_router, \
                    psycopg.connect(port=cluster.spec.coordinator.port, **info) as direct:  # type: ignore[arg-type]
                statement = "SELECT grp, count(*), sum(val) FROM {t} GROUP BY grp ORDER BY 1"
                before = stats.routed
                assert run(via_router, statement.format(t="t"), True) == run(direct, statement.format(t="t_plain"), True)
                assert stats.routed == before + 1  # on the workers, as the role
                refused = "SELECT count(*) FROM lines"
                before, fallbacks = stats.routed, stats.routing_fallbacks
                assert run(via_router, refused, True) == run(direct, refused, True) == ("error", "42501")
                # refused on the workers, answered by the coordinator in its own words
                assert (stats.routed, stats.routing_fallbacks) == (before, fallbacks + 1)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        drop_role(fleet, ROLE)


PARAMETER_WHERE = st.sampled_from([(" WHERE n > %s", st.integers(-7, 7)), (" WHERE note = %s", st.sampled_from(["n1", "n5", "zz"])),
                                   (" WHERE val < %s", st.integers(0, 140)), (" WHERE flag = %s", st.booleans())])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aggregates=st.lists(AGGREGATE, min_size=1, max_size=3), groups=GROUPS, where=PARAMETER_WHERE,
       data_draw=st.data(), binary=st.booleans(), in_transaction=st.booleans())
def test_random_aggregates_with_values_match_one_plain_table(cluster: LocalCluster, router: RouterServer, data: str,
                                                             aggregates: list[str], groups: list[str],
                                                             where: tuple[str, Any], data_draw: st.DataObject,
                                                             binary: bool, in_transaction: bool) -> None:
    """The same shapes sent with the extended protocol and a bound value (psycopg's server-side binding, text
    or binary results), in autocommit or inside a transaction."""
    condition, values = where
    value = data_draw.draw(values)
    groups = [g.replace("%", "%%") for g in groups]  # psycopg's placeholders: a literal % is written %%
    targets = ", ".join(groups + aggregates)
    statement = f"SELECT {targets} FROM {{t}}{condition}"
    if groups:
        statement += " GROUP BY " + ", ".join(groups)
    statement += " ORDER BY " + ", ".join(f"{i} NULLS FIRST" for i in range(1, len(groups) + len(aggregates) + 1))

    def bound(conn: psycopg.Connection[Any], table: str) -> Any:
        if in_transaction:
            conn.execute("BEGIN")
        cur = conn.cursor(binary=binary)
        try:
            cur.execute(statement.format(t=table), (value,))
            return cur.fetchall(), [(d.name, d.type_code) for d in cur.description or []]
        except psycopg.Error as exc:
            return "error", exc.sqlstate
        finally:
            if in_transaction:
                conn.execute("ROLLBACK")

    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        before = router.context.stats.routed
        got = bound(via_router, "t")
        assert router.context.stats.routed == before + 1, statement
        assert got == bound(direct, "t_plain"), (statement, value)


def test_select_for_update_over_every_shard_in_a_transaction(cluster: LocalCluster, router: RouterServer,
                                                             data: str) -> None:
    """An ORM's select_for_update() without the key, in a transaction that runs on the workers: every shard
    returns and locks its rows (the same rows as one plain table); a writer of a locked row waits for the
    transaction; with ORDER BY or LIMIT (one server locks only what it returns) it goes to the coordinator,
    refused in such a transaction."""
    with connect(cluster, router.config.port, data) as conn, \
            connect(cluster, cluster.spec.coordinator.port, data) as other:
        conn.autocommit = False
        cur = psycopg.ClientCursor(conn)
        cur.execute("UPDATE t SET note = 'mine' WHERE id = 1")  # the transaction runs on a worker
        for name in ("t", "t_plain"):
            plain = psycopg.ClientCursor(other)
            plain.execute(f"SELECT id, n FROM {name} WHERE n = 3 ORDER BY id")
            expected = plain.fetchall()
        cur.execute("SELECT id, n FROM t WHERE n = 3 FOR UPDATE")
        assert sorted(cur.fetchall()) == expected and len(expected) > 10
        other.execute("SET statement_timeout = '500ms'")  # it cancels postgres_fdw's remote statement too
        locked = expected[-1][0]
        with pytest.raises(psycopg.errors.QueryCanceled):
            other.execute("UPDATE t SET note = 'theirs' WHERE id = %s", (locked,))
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            cur.execute("SELECT id FROM t WHERE n = 3 ORDER BY id LIMIT 2 FOR UPDATE")
        conn.rollback()
        other.execute("UPDATE t SET note = 'theirs' WHERE id = %s", (locked,))  # free again
