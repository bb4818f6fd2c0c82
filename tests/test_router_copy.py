"""COPY through the router: COPY dist_table FROM STDIN routed record by record to the shards (all or
nothing), COPY dist_table TO STDOUT gathered from the shards; compared with the same COPY into and out of
one plain table (rows, the COPY n tag, errors)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import generators, pq, waiting

from conftest import connect, routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router import copyin
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

pytestmark = pytest.mark.cluster

COLUMNS = "id bigint PRIMARY KEY, grp int, note text, at date"
ROWS = 3000


@pytest.fixture
def tables(fleet: Fleet, schema: str) -> str:
    """t distributed over 4 shards on both workers, ref a reference table, plain an ordinary table."""
    conn = fleet.conn()
    for name in ("t", "plain", "ref"):
        conn.execute(f"CREATE TABLE {name} ({COLUMNS})")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "ref")))
    return schema


@pytest.fixture
def router(cluster: LocalCluster, tables: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def text_rows(n: int = ROWS, start: int = 1) -> bytes:
    """Text-format rows with NULLs, escapes and non-ASCII in the other columns."""
    lines = []
    for i in range(start, start + n):
        note = "\\N" if i % 11 == 0 else f"n\\t{i} é"
        lines.append(f"{i}\t{i % 7 if i % 13 else chr(92) + 'N'}\t{note}\t2024-01-{i % 28 + 1:02d}\n")
    return "".join(lines).encode()


def csv_rows(n: int = ROWS, header: bool = True) -> bytes:
    lines = ["id,grp,note,at\n"] if header else []
    for i in range(1, n + 1):
        note = "" if i % 11 == 0 else f'"quoted, ""{i}""\nline"'
        lines.append(f"{i},{i % 7},{note},2024-02-{i % 28 + 1:02d}\n")
    return "".join(lines).encode()


def copy_in(conn: psycopg.Connection[Any], statement: str, data: bytes, pieces: int = 7) -> int:
    with conn.cursor() as cur:
        with cur.copy(statement) as cp:
            step = len(data) // pieces + 1
            for pos in range(0, len(data), step):
                cp.write(data[pos:pos + step])
        return cur.rowcount


def copy_out(conn: psycopg.Connection[Any], statement: str) -> tuple[bytes, int]:
    with conn.cursor() as cur:
        with cur.copy(statement) as cp:
            data = b"".join(bytes(chunk) for chunk in cp)
        return data, cur.rowcount


def table_rows(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


@pytest.mark.parametrize(("options", "make"), [("", text_rows), ("(FORMAT csv, HEADER)", csv_rows)], ids=["text", "csv"])
def test_copy_in_matches_a_plain_table(cluster: LocalCluster, router: RouterServer, tables: str,
                                       options: str, make: Any) -> None:
    data = make()
    stats = router.context.stats
    with connect(cluster, router.config.port, tables) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        routed = stats.routed
        assert copy_in(via_router, f"COPY t FROM STDIN {options}", data) == ROWS
        assert stats.routed == routed + 1  # the router ran it, not the coordinator
        assert copy_in(direct, f"COPY plain FROM STDIN {options}", data) == ROWS
        assert table_rows(direct, "t") == table_rows(direct, "plain")
        # the session is not pinned: the next statement is routed again
        note = "SELECT note FROM {} WHERE id = 5"
        assert via_router.execute(note.format("t")).fetchone() == direct.execute(note.format("plain")).fetchone()
        assert stats.routed == routed + 2


def load_both(cluster: LocalCluster, schema: str, data: bytes = b"") -> None:
    with connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        for table in ("t", "plain"):
            copy_in(direct, f"COPY {table} FROM STDIN", data or text_rows())


@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)", "(FORMAT csv, DELIMITER ';', NULL 'nil')"],
                         ids=["text", "csv-header", "csv-options"])
def test_copy_out_matches_a_plain_table(cluster: LocalCluster, router: RouterServer, tables: str, options: str) -> None:
    load_both(cluster, tables)
    stats = router.context.stats
    with connect(cluster, router.config.port, tables) as via_router:
        routed = stats.routed
        got, count = copy_out(via_router, f"COPY t TO STDOUT {options}")
        assert stats.routed == routed + 1
        want, want_count = copy_out(via_router, f"COPY plain TO STDOUT {options}")  # the coordinator's
        assert count == want_count == ROWS
        got_lines, want_lines = got.splitlines(keepends=True), want.splitlines(keepends=True)
        if "HEADER" in options:
            assert got_lines[0] == want_lines[0] == b"id,grp,note,at\n"
        assert sorted(got_lines) == sorted(want_lines)
        columns, _ = copy_out(via_router, "COPY t (note, id) TO STDOUT")
        plain, _ = copy_out(via_router, "COPY plain (note, id) TO STDOUT")
        assert sorted(columns.splitlines()) == sorted(plain.splitlines())


def psql(cluster: LocalCluster, port: int, schema: str, command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": cluster.spec.coordinator.password, "PGOPTIONS": f"-c search_path={schema}"}
    argv = [cluster.binaries.path("psql"), "-X", "-h", "127.0.0.1", "-p", str(port), "-U", cluster.spec.superuser,
            "-d", cluster.spec.dbname, "-v", "ON_ERROR_STOP=1", "-c", command]
    return subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(("options", "make"), [("", text_rows), ("with (format csv, header)", csv_rows)],
                         ids=["text", "csv"])
def test_psql_copy_in_and_out(cluster: LocalCluster, router: RouterServer, tables: str, tmp_path: Path,
                              caplog: pytest.LogCaptureFixture, options: str, make: Any) -> None:
    source = tmp_path / "rows.txt"
    source.write_bytes(make())
    os.chmod(tmp_path, 0o755)
    port = router.config.port
    with caplog.at_level(logging.INFO, logger="pgfleet.router.copyin"):
        loaded = {table: psql(cluster, port, tables, f"\\copy {table} from '{source}' {options}")
                  for table in ("t", "plain")}
    assert not [r for r in caplog.records if "through the coordinator" in r.getMessage()]  # split by the router
    assert loaded["t"].returncode == 0, loaded["t"].stderr
    assert loaded["t"].stdout == loaded["plain"].stdout == f"COPY {ROWS}\n"
    with connect(cluster, cluster.spec.coordinator.port, tables) as direct:
        assert table_rows(direct, "t") == table_rows(direct, "plain")
    for table in ("t", "plain"):
        out = psql(cluster, port, tables, f"\\copy {table} to '{tmp_path / table}.txt'")
        assert out.returncode == 0 and out.stdout == f"COPY {ROWS}\n", out.stderr
    assert sorted((tmp_path / "t.txt").read_bytes().splitlines()) == sorted((tmp_path / "plain.txt").read_bytes().splitlines())


BAD = {
    "extra-column": b"77\t1\tx\t2024-01-01\tsurplus\n",
    "missing-column": b"77\t1\n",
    "bad-value": b"77\tseven\tx\t2024-01-01\n",
    "bad-date": b"77\t1\tx\t2024-13-45\n",
    "null-key": b"\\N\t1\tx\t2024-01-01\n",
    "bad-key": b"seven\t1\tx\t2024-01-01\n",
    "duplicate-key": b"42\t1\tagain\t2024-01-01\n",
}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_rows_load_nothing_with_the_error_of_one_server(cluster: LocalCluster, router: RouterServer, tables: str,
                                                             bad: str) -> None:
    good = text_rows(2000)
    data = good[:good.index(b"\n1500\t") + 1] + BAD[bad] + good[good.index(b"\n1500\t") + 1:]
    errors: dict[str, psycopg.Error] = {}
    with connect(cluster, router.config.port, tables) as via_router:
        for table in ("t", "plain"):
            with pytest.raises(psycopg.Error) as caught:
                copy_in(via_router, f"COPY {table} FROM STDIN", data)
            errors[table] = caught.value
        assert via_router.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert via_router.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    routed, plain = errors["t"].diag, errors["plain"].diag
    assert routed.sqlstate == plain.sqlstate
    assert routed.message_primary == (plain.message_primary or "").replace("plain", "t")
    assert routed.message_detail == plain.message_detail


def copy_then_fail(conn: psycopg.Connection[Any], statement: str, data: bytes) -> tuple[str, str]:
    """COPY FROM STDIN that the client ends with CopyFail (libpq's PQputCopyEnd with a message): the
    error's SQLSTATE and message. (psycopg's Copy sends CopyFail too but hides the server's answer; its
    generators wait without holding the GIL, which the router in this process needs.)"""
    pg = conn.pgconn
    pg.send_query(statement.encode())
    waiting.wait(generators.send(pg), pg.socket)
    started = waiting.wait(generators.fetch(pg), pg.socket)
    assert started is not None and started.status == pq.ExecStatus.COPY_IN
    for pos in range(0, len(data), 8192):
        waiting.wait(generators.copy_to(pg, data[pos:pos + 8192]), pg.socket)
    with pytest.raises(psycopg.Error) as caught:
        waiting.wait(generators.copy_end(pg, b"the client gives up"), pg.socket)
    while waiting.wait(generators.fetch(pg), pg.socket) is not None:
        pass
    return caught.value.diag.sqlstate or "", caught.value.diag.message_primary or ""


def test_copy_fail_loads_nothing(cluster: LocalCluster, router: RouterServer, tables: str) -> None:
    with connect(cluster, router.config.port, tables) as via_router:
        errors = {table: copy_then_fail(via_router, f"COPY {table} FROM STDIN", text_rows()) for table in ("t", "plain")}
        assert via_router.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert via_router.execute("SELECT 1").fetchone() == (1,)
    assert errors["t"] == errors["plain"] == ("57014", "COPY from stdin failed: the client gives up")


def test_coordinator_keeps_reference_where_and_queries(cluster: LocalCluster, router: RouterServer, tables: str) -> None:
    load_both(cluster, tables)
    stats = router.context.stats
    with connect(cluster, router.config.port, tables) as via_router:
        routed = stats.routed
        assert copy_in(via_router, "COPY ref FROM STDIN", text_rows(50)) == 50
        assert copy_in(via_router, "COPY t FROM STDIN WHERE id > 5000", text_rows(50, start=5001)) == 50
        assert copy_out(via_router, "COPY (SELECT id FROM t WHERE id > 5000) TO STDOUT")[1] == 50
        assert stats.routed == routed
        assert via_router.execute("SELECT count(*) FROM t").fetchone() == (ROWS + 50,)


def test_data_the_router_cannot_split_goes_through_the_coordinator(cluster: LocalCluster, router: RouterServer,
                                                                   tables: str, caplog: pytest.LogCaptureFixture) -> None:
    """A key the split cannot read (quoted with spaces in CSV) after routed chunks: the coordinator gets
    every byte again and decides; rows equal a plain table's. 10 MB: more than the router keeps in memory
    for that replay (the rest is in a file)."""
    many = csv_rows(240000, header=False)
    assert len(many) > 2 * copyin.SPOOL_IN_MEMORY
    data = many + b'" 240001",1,x,2024-01-01\n'
    with connect(cluster, router.config.port, tables) as via_router, \
            caplog.at_level(logging.INFO, logger="pgfleet.router.copyin"):
        counts = [copy_in(via_router, f"COPY {table} FROM STDIN (FORMAT csv)", data, pieces=40) for table in ("t", "plain")]
        assert [r for r in caplog.records if "through the coordinator" in r.getMessage()]
        assert counts == [240001, 240001]
        assert table_rows(via_router, "t") == table_rows(via_router, "plain")


@pytest.mark.slow
def test_worker_killed_during_a_large_copy(cluster: LocalCluster, tables: str) -> None:
    """kill -9 of a worker while a multi-shard COPY streams: the client gets an error, and once the
    router's recovery ran the table has none of the rows (never some)."""
    from test_router_txn_faults import no_prepared, wait_for
    from test_router_txn_faults import routing_router as recovering_router

    rows = 200_000
    data = text_rows(rows)
    with recovering_router(cluster, recovery_min_age=1.0) as router:
        with connect(cluster, router.config.port, tables) as via_router, pytest.raises(psycopg.Error) as caught, \
                via_router.cursor() as cur, cur.copy("COPY t FROM STDIN") as cp:
            half = len(data) // 2
            cp.write(data[:half])
            cluster.server("w2").kill()
            cp.write(data[half:])
        assert caught.value.diag.sqlstate is not None
        wait_for(lambda: not cluster.server("w2").is_running(), 10, "w2 to be gone")
        cluster.server("w2").start()
        wait_for(lambda: no_prepared(cluster), 20, "recovery of prepared transactions")
        with connect(cluster, cluster.spec.coordinator.port, tables) as direct:
            assert direct.execute("SELECT count(*) FROM t").fetchone() in ((0,), (rows,))
            assert direct.execute("SELECT count(*) FROM t").fetchone() == (0,)  # killed before the commit
