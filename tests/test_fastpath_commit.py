"""The Python API's multi-shard writes (load, load_copy, fanout) commit like the router's transactions: a
durable decision row on the coordinator between PREPARE and COMMIT PREPARED, so a writer killed there
leaves nothing half-applied once recovery has run, and a backup's consistent point waits for them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router import recovery
from pgfleet.router.twophase import GID_PREFIX
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

pytestmark = pytest.mark.cluster


def _prepared(cluster: LocalCluster, pattern: str) -> list[str]:
    gids: list[str] = []
    for node in ("w1", "w2"):
        ep = cluster.endpoint(node)
        with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname) as conn:
            gids += [str(g) for (g,) in conn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE %s",
                                                     (pattern,)).fetchall()]
    return gids


def _superuser_conn(cluster: LocalCluster, node: str) -> psycopg.Connection[tuple[object, ...]]:
    ep = cluster.endpoint(node)
    return psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname,
                           autocommit=True)


def _start_load(cluster: LocalCluster, schema: str, file: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PGFLEET_DIR=str(cluster.directory))
    return subprocess.Popen([sys.executable, "-m", "pgfleet.cli.main", "load", f"{schema}.t", str(file)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_prepared(cluster: LocalCluster, proc: subprocess.Popen[str], count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        gids = _prepared(cluster, f"{GID_PREFIX}copy\\_%")
        if len(gids) >= count:
            return gids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"the load did not prepare its {count} shards")


@pytest.mark.slow
def test_a_load_killed_before_its_decision_is_rolled_back_and_one_let_through_commits(
        cluster: LocalCluster, fleet: Fleet, schema: str, tmp_path: Path) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v int)")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    file = tmp_path / "rows.tsv"
    file.write_text("".join(f"{i}\t{i}\n" for i in range(1, 2001)))

    def recover() -> recovery.Report:
        return recovery.recover_once(lambda: _superuser_conn(cluster, "coord"),
                                     lambda node: _superuser_conn(cluster, node), min_age=0.0, keep_abort=0.0)

    with _superuser_conn(cluster, "coord") as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pgfleet.commit_decisions IN EXCLUSIVE MODE")  # the decision waits
        killed = _start_load(cluster, schema, file)
        _wait_prepared(cluster, killed, 4)
        time.sleep(0.3)
        assert killed.poll() is None, "the load committed without waiting for its decision"
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        holder.execute("COMMIT")
    report = recover()
    assert report.aborted == 4 and report.committed == 0, report
    assert _prepared(cluster, "pgfleet\\_%") == []
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)

    with _superuser_conn(cluster, "coord") as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pgfleet.commit_decisions IN EXCLUSIVE MODE")
        let_through = _start_load(cluster, schema, file)
        _wait_prepared(cluster, let_through, 4)
        holder.execute("COMMIT")
        _out, err = let_through.communicate(timeout=60)
        assert let_through.returncode == 0, err
    assert conn.execute("SELECT count(*), sum(v) FROM t").fetchone() == (2000, 2001000)
    assert _prepared(cluster, "pgfleet\\_%") == []
    rows = conn.execute("SELECT outcome, count(*) FROM pgfleet.commit_decisions WHERE gid LIKE %s GROUP BY 1 ORDER BY 1",
                        (f"{GID_PREFIX}copy\\_%",)).fetchall()
    assert rows == [("abort", 4), ("commit", 4)]  # decided durably; recovery deletes them once no worker holds them prepared
    recover()
    assert conn.execute("SELECT count(*) FROM pgfleet.commit_decisions WHERE gid LIKE %s",
                        (f"{GID_PREFIX}copy\\_%",)).fetchone() == (0,)
