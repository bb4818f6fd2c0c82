"""A client's plain ``VACUUM`` / ``ANALYZE`` of distributed and reference tables through the router reaches
every shard (no per-shard warning from the coordinator), and the session stays routable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import routing_router, shard_rows
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

pytestmark = pytest.mark.cluster


@pytest.fixture
def router(cluster: LocalCluster, fleet: Fleet, schema: str) -> Iterator[RouterServer]:
    conn = fleet.conn()
    conn.execute("CREATE TABLE v (id bigint PRIMARY KEY, pad text)")
    conn.execute("INSERT INTO v SELECT g, repeat('x', 50) FROM generate_series(1, 2000) g")
    conn.execute("CREATE TABLE r (id int PRIMARY KEY)")
    conn.execute("INSERT INTO r SELECT generate_series(1, 50)")
    conn.execute("CREATE TABLE plain (id int)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "v"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "r")))
    conn.execute("DELETE FROM v WHERE id % 2 = 0")
    conn.execute("DELETE FROM r WHERE id > 25")
    with routing_router(cluster) as server:
        yield server


def test_vacuum_through_the_router_reaches_every_shard(cluster: LocalCluster, fleet: Fleet, schema: str,
                                                        router: RouterServer) -> None:
    notices: list[str] = []
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password,
                         options=f"-c search_path={schema}", autocommit=True) as conn:
        conn.add_notice_handler(lambda d: notices.append(f"{d.severity}: {d.message_primary}"))
        cur = psycopg.ClientCursor(conn)  # simple protocol, as psql
        cur.execute("VACUUM (ANALYZE) v, r")
        assert cur.statusmessage == "VACUUM"
        cur.execute("ANALYZE v")
        assert cur.statusmessage == "ANALYZE"
        cur.execute("VACUUM plain")  # a plain table: the coordinator's, as before
        with pytest.raises(psycopg.errors.UndefinedTable):
            cur.execute("VACUUM missing_table")
        cur.execute("SELECT pad FROM v WHERE id = 1")  # still routed: VACUUM did not pin the session
        assert cur.fetchall() == [("x" * 50,)]
    assert notices == []
    # (dead-tuple counts are not compared: the DELETEs' statistics may reach the collector after the VACUUM)
    vacuumed = "SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL FROM pg_stat_user_tables " \
               "WHERE relid = %(shard)s::regclass"
    assert shard_rows(fleet, QualifiedName(schema, "v"), vacuumed) == {(True, True)}
    assert shard_rows(fleet, QualifiedName(schema, "r"), vacuumed) == {(True, True)}
    coordinator: Any = fleet.conn().execute(  # the parent's statistics, and the reference table itself
        "SELECT (SELECT reltuples FROM pg_class WHERE oid = 'v'::regclass), "
        "(SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables WHERE relid = 'r'::regclass)").fetchone()
    assert coordinator == (1000, True)
    stats = router.context.stats
    assert stats.pinned_sessions == 0 and stats.routed >= 3
