"""pgfleet backup / restore against real servers: a consistent point under cross-worker transfers, the
restored cluster's independence from the source, prepared transactions settled, the commit lock of
flush_queue, damaged backups refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from conftest import pgfleet_cli

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.restore_point import create_consistent_point
from pgfleet.errors import ExecuteError
from pgfleet.execute.connect import Conn, connect

ACCOUNTS = 400
START_BALANCE = 1000


def _setup_accounts(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
    conn.execute("INSERT INTO accounts SELECT g, %s FROM generate_series(1, %s) g", (START_BALANCE, ACCOUNTS))
    conn.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL)")
    assert pgfleet_cli("distribute", f"{schema}.accounts", "--key", "id", "--shards", "4",
                       directory=fleet.local.directory if fleet.local else None).returncode == 0
    assert pgfleet_cli("reference", f"{schema}.ledger",
                       directory=fleet.local.directory if fleet.local else None).returncode == 0


def _node_of(conn: Conn, schema: str, key: int) -> tuple[str, str]:
    """(node, schema-qualified shard table) holding accounts row ``key``."""
    row = conn.execute(
        "SELECT s.node, format('%%I.%%I', s.shard_schema, s.shard_table) FROM accounts a "
        "JOIN pg_class c ON c.oid = a.tableoid JOIN pgfleet.shards s ON s.foreign_table = c.relname "
        "WHERE a.id = %s", (key,)).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def _cross_pairs(conn: Conn, schema: str, count: int) -> list[tuple[int, int]]:
    by_node: dict[str, list[int]] = {}
    for key in range(1, 41):
        by_node.setdefault(_node_of(conn, schema, key)[0], []).append(key)
    first, second = sorted(by_node)[:2]
    return [(by_node[first][i % len(by_node[first])], by_node[second][i % len(by_node[second])])
            for i in range(count)]


def _summary(conn: Conn, table: str = "accounts", column: str = "balance") -> tuple[int, int, int]:
    row = conn.execute(f"SELECT count(*), coalesce(sum({column}), 0), "
                       f"coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {table} t").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _restored_fleet(directory: Path) -> Fleet:
    return Fleet.open(directory)


@dataclass
class Writers:
    stop: threading.Event
    threads: list[threading.Thread]
    commits: list[int]
    errors: list[str]


def _start_transfers(cluster: LocalCluster, schema: str, pairs: list[tuple[int, int]]) -> Writers:
    stop = threading.Event()
    commits = [0, 0]
    errors: list[str] = []

    def transfer(index: int) -> None:
        conn = connect(cluster.endpoint("coord"), autocommit=False)
        conn.execute(f'SET search_path = "{schema}"'.encode())
        conn.commit()
        n = 0
        while not stop.is_set():
            a, b = pairs[(n + index) % len(pairs)]
            n += 1
            try:
                conn.execute("UPDATE accounts SET balance = balance - 3 WHERE id = %s", (a,))
                conn.execute("UPDATE accounts SET balance = balance + 3 WHERE id = %s", (b,))
                if index == 1:  # a reference write too: flush_queue's two-phase commit on the workers
                    conn.execute("INSERT INTO ledger VALUES (%s, 3)", (n,))
                conn.commit()
                commits[index] += 1
            except psycopg.errors.SerializationFailure:
                conn.rollback()
            except psycopg.Error as exc:
                errors.append(str(exc))
                conn.rollback()
        conn.close()

    threads = [threading.Thread(target=transfer, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    return Writers(stop, threads, commits, errors)


@pytest.fixture
def restored_dirs(base_dir: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    name = request.node.name[:40]
    backup_dir, new_dir = base_dir / f"backup-{name}", base_dir / f"restored-{name}"
    yield backup_dir, new_dir
    if LocalCluster.exists(new_dir):
        LocalCluster.load(new_dir).destroy()
    shutil.rmtree(backup_dir, ignore_errors=True)


@pytest.mark.slow
def test_backup_during_transfers_restores_a_consistent_independent_cluster(
        fleet: Fleet, cluster: LocalCluster, schema: str, restored_dirs: tuple[Path, Path]) -> None:
    backup_dir, new_dir = restored_dirs
    _setup_accounts(fleet, schema)
    pairs = _cross_pairs(fleet.conn(), schema, 20)
    writers = _start_transfers(cluster, schema, pairs)
    try:
        time.sleep(0.5)
        before = list(writers.commits)
        done = pgfleet_cli("backup", str(backup_dir), directory=cluster.directory)
        assert done.returncode == 0, done.stderr
        during = [a - b for a, b in zip(writers.commits, before, strict=True)]
    finally:
        writers.stop.set()
        for t in writers.threads:
            t.join(30)
    assert not writers.errors, writers.errors[:3]
    assert min(during) > 0, f"the writers did not commit during the backup: {during}"
    manifest = json.loads((backup_dir / "pgfleet-backup.json").read_text())
    assert manifest["held_ms"] < 1000
    assert {n["name"] for n in manifest["nodes"]} == {"coord", "w1", "w2"}
    for node in cluster.spec.nodes:  # nothing of the source's passwords beyond the coordinator's data directory
        hits = [p for p in backup_dir.rglob("*") if p.is_file() and p.stat().st_size < 1 << 20
                and node.password.encode() in p.read_bytes()]
        assert all("nodes/coord/" in str(p) for p in hits), hits

    done = pgfleet_cli("restore", str(backup_dir), "--dir", str(new_dir))
    assert done.returncode == 0, done.stderr
    restored = LocalCluster.load(new_dir)
    assert not {n.port for n in restored.spec.nodes} & {n.port for n in cluster.spec.nodes}
    with _restored_fleet(new_dir) as rfleet:
        rconn = rfleet.conn()
        rconn.execute(f'SET search_path = "{schema}"'.encode())
        count, total, _ = _summary(rconn)
        assert (count, total) == (ACCOUNTS, ACCOUNTS * START_BALANCE)  # every transfer whole or not at all
        ledger = rconn.execute("SELECT count(*), coalesce(sum(amount), 0) FROM ledger").fetchone()
        for worker in ("w1", "w2"):  # the reference copies hold exactly the coordinator's rows
            with connect(restored.endpoint(worker)) as wconn:
                copy = wconn.execute(f'SELECT count(*), coalesce(sum(amount), 0) FROM "{schema}".ledger'.encode()
                                     ).fetchone()
                assert copy == ledger, (worker, copy, ledger)
                assert wconn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
        # the foreign servers and the catalog point at the restored workers only
        ports = dict(rconn.execute(
            "SELECT srvname, (SELECT split_part(o, '=', 2) FROM unnest(srvoptions) o WHERE o LIKE 'port=%') "
            "FROM pg_foreign_server WHERE srvname LIKE 'pgfleet\\_%'").fetchall())
        assert ports == {f"pgfleet_{w}": str(restored.node(w).port) for w in ("w1", "w2")}
        nodes = dict(rconn.execute("SELECT name, port FROM pgfleet.nodes").fetchall())
        assert nodes == {n.name: n.port for n in restored.spec.nodes}
        # a write on the restored cluster leaves the source unchanged
        source_before = _summary(fleet.conn())
        rconn.execute("UPDATE accounts SET balance = balance + 1000000 WHERE id IN (1, 2, 3, 4, 5, 6)")
        rconn.execute("INSERT INTO ledger VALUES (-1, 5)")
        assert _summary(rconn)[1] == ACCOUNTS * START_BALANCE + 6_000_000
    assert _summary(fleet.conn()) == source_before
    assert fleet.conn().execute("SELECT count(*) FROM ledger WHERE id = -1").fetchone() == (0,)


def _prepare_on_worker(conn: Conn, shard: str, key: int, delta: int, gid: str) -> None:
    conn.execute("BEGIN")
    conn.execute(f"UPDATE {shard} SET balance = balance + %s WHERE id = %s".encode(), (delta, key))
    conn.execute(f"PREPARE TRANSACTION '{gid}'".encode())


def _coordinator_xid(conn: Conn, commit: bool) -> int:
    conn.execute("BEGIN")
    row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
    conn.execute("COMMIT" if commit else "ROLLBACK")
    assert row is not None
    return int(row[0])


def test_flush_queue_waits_for_a_backups_restore_point(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    """A reference write's two-phase commit on the workers cannot run while a backup holds the decisions."""
    conn = fleet.conn()
    conn.execute("CREATE TABLE refs (id int PRIMARY KEY, v int)")
    fleet.conn().execute("SELECT pgfleet.reference_table('refs')")
    with connect(cluster.endpoint("coord")) as holder, connect(cluster.endpoint("coord"), autocommit=False) as writer:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE pgfleet.commit_decisions IN EXCLUSIVE MODE")
        insert = f'INSERT INTO "{schema}".refs VALUES (1, 1)'.encode()
        writer.execute("SET lock_timeout = '300ms'")
        writer.execute(insert)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            writer.commit()
        writer.rollback()
        holder.execute("ROLLBACK")
        writer.execute(insert)
        writer.commit()
    for node in ("w1", "w2"):
        with connect(cluster.endpoint(node)) as wconn:
            assert wconn.execute(f'SELECT count(*) FROM "{schema}".refs'.encode()).fetchone() == (1,)


def test_consistent_point_waits_for_open_writers_then_gives_up(fleet: Fleet, cluster: LocalCluster,
                                                               schema: str) -> None:
    _setup_accounts(fleet, schema)
    with connect(cluster.endpoint("coord"), autocommit=False) as writer:
        writer.execute(f'SET search_path = "{schema}"'.encode())
        writer.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        pid = writer.info.backend_pid
        workers = {n: connect(cluster.endpoint(n)) for n in ("w1", "w2")}
        try:
            with connect(cluster.endpoint("coord")) as coord:
                started = time.monotonic()
                with pytest.raises(ExecuteError, match=f"pid {pid}"):
                    create_consistent_point(coord, workers, "pgfleet_test_never", lock_wait=1)
                assert time.monotonic() - started < 5
                writer.rollback()
                point = create_consistent_point(coord, workers, "pgfleet_test_point", lock_wait=5)
        finally:
            for c in workers.values():
                c.close()
    assert [n for n, _ in point.lsns] == ["coord", "w1", "w2"]
    assert point.held_ms < 1000


def test_backup_refuses_a_directory_with_files(fleet: Fleet, cluster: LocalCluster, tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    done = pgfleet_cli("backup", str(tmp_path), directory=cluster.directory)
    assert done.returncode == 1 and "already holds files" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["something"]
    slots = fleet.conn().execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgfleet_backup%'"
                                 ).fetchone()
    assert slots == (0,)


def test_backup_with_a_worker_down_fails_whole(fleet: Fleet, cluster: LocalCluster, base_dir: Path) -> None:
    target = base_dir / "backup-worker-down"
    cluster.server("w2").stop()
    try:
        done = pgfleet_cli("backup", str(target), directory=cluster.directory)
    finally:
        cluster.start()
    assert done.returncode == 1
    assert "node w2" in done.stderr and "start the node" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not target.exists()
    for node in ("coord", "w1", "w2"):
        with connect(cluster.endpoint(node)) as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)


def test_a_killed_backups_slot_is_dropped_by_the_next_backup(fleet: Fleet, cluster: LocalCluster, base_dir: Path) -> None:
    """kill -9 during a backup leaves its replication slots (they keep WAL until the disk is full); the next
    backup drops them and says so."""
    env = {**os.environ, "PGFLEET_DIR": str(cluster.directory)}
    killed = subprocess.Popen([sys.executable, "-m", "pgfleet.cli.main", "backup", str(base_dir / "backup-killed")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slots = "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgfleet\\_backup\\_%'"

    def copying() -> bool:  # its pg_basebackup runs: killed in the middle of copying a node
        table = subprocess.run(["ps", "-eo", "ppid=,args="], check=True, capture_output=True, text=True).stdout
        return any(line.split(None, 1)[0] == str(killed.pid) and "pg_basebackup" in line for line in table.splitlines())

    try:
        deadline = time.monotonic() + 60
        while not copying() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
    finally:
        killed.kill()
        killed.wait()
    left = fleet.conn().execute(slots).fetchall()
    assert len(left) == 1 and str(killed.pid) in left[0][0]
    done = pgfleet_cli("backup", str(base_dir / "backup-after-kill"), directory=cluster.directory)
    assert done.returncode == 0, done.stderr
    assert f"dropped replication slot {left[0][0]} on coord" in done.stdout + done.stderr
    for node in ("coord", "w1", "w2"):
        with connect(cluster.endpoint(node)) as conn:
            assert conn.execute("SELECT slot_name, active, temporary FROM pg_replication_slots").fetchall() == [], node
    # nothing of the killed backup goes on (pg_basebackup -X stream left a WAL receiver running for good)
    assert not subprocess.run(["pgrep", "-f", str(base_dir / "backup-killed")], check=False, capture_output=True).stdout


def _prepare_in_doubt(conn: Conn, cluster: LocalCluster, schema: str) -> list[Conn]:
    """Prepared pgfleet transactions on the workers as a crash would leave them: keys 1..4 get +7 (router
    gid, decision 'commit'), +100 (router gid, no decision), +11 (flush gid of a committed coordinator
    transaction), +1000 (flush gid of an aborted one)."""
    keys = {k: _node_of(conn, schema, k) for k in (1, 2, 3, 4)}
    commit_xid, abort_xid = _coordinator_xid(conn, True), _coordinator_xid(conn, False)
    gids = {1: ("pgfleet_rt_t1", 7), 2: ("pgfleet_rt_t2", 100),
            3: (f"pgfleet_xact_{commit_xid}_{keys[3][0]}", 11), 4: (f"pgfleet_xact_{abort_xid}_{keys[4][0]}", 1000)}
    conn.execute("INSERT INTO pgfleet.commit_decisions (gid, outcome, nodes) VALUES (%s, 'commit', %s)",
                 (gids[1][0], [keys[1][0]]))
    conns = []
    for key, (gid, delta) in gids.items():
        node, shard = keys[key]
        wconn = connect(cluster.endpoint(node))
        conns.append(wconn)
        _prepare_on_worker(wconn, shard, key, delta, gid)
    return conns


def _forget_in_doubt(conn: Conn, cluster: LocalCluster, conns: list[Conn]) -> None:
    for wconn in conns:
        wconn.close()
    for node in ("w1", "w2"):
        with connect(cluster.endpoint(node)) as wconn:
            for (gid,) in wconn.execute("SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'pgfleet\\_%'").fetchall():
                wconn.execute(f"ROLLBACK PREPARED '{gid}'".encode())
    conn.execute("DELETE FROM pgfleet.commit_decisions WHERE gid LIKE 'pgfleet\\_rt\\_t%'")


@pytest.mark.slow
def test_archive_restore_equals_the_source_at_a_later_point_and_settles_prepared(
        fleet: Fleet, cluster: LocalCluster, schema: str, restored_dirs: tuple[Path, Path]) -> None:
    backup_dir, new_dir = restored_dirs
    _setup_accounts(fleet, schema)
    conn = fleet.conn()
    conn.execute("INSERT INTO ledger SELECT g, g FROM generate_series(1, 50) g")
    in_doubt = _prepare_in_doubt(conn, cluster, schema)
    try:
        done = pgfleet_cli("backup", str(backup_dir), "--archive", directory=cluster.directory)
        assert done.returncode == 0, done.stderr
        try:
            conn.execute("UPDATE accounts SET balance = 5 WHERE id = 5")
            conn.execute("INSERT INTO ledger VALUES (51, 51)")
            recorded = _summary(conn), _summary(conn, "ledger", "amount")  # quiet: what after_one must hold
            done = pgfleet_cli("restore-point", "after_one", directory=cluster.directory)
            assert done.returncode == 0, done.stderr
            time.sleep(0.2)
            between = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}"
            time.sleep(0.2)
            conn.execute("UPDATE accounts SET balance = 6 WHERE id = 6")
            conn.execute("DELETE FROM ledger WHERE id > 25")
            done = pgfleet_cli("restore-point", "after_two", directory=cluster.directory)
            assert done.returncode == 0, done.stderr
            assert pgfleet_cli("restore-point", "after_two", directory=cluster.directory).returncode == 1
        finally:
            stopped = pgfleet_cli("archive-stop", directory=cluster.directory)
    finally:
        _forget_in_doubt(conn, cluster, in_doubt)
    assert stopped.returncode == 0 and "w1" in stopped.stdout, stopped.stderr
    assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgfleet_archive%'"
                        ).fetchone() == (0,)

    done = pgfleet_cli("restore", str(backup_dir), "--dir", str(new_dir), "--target-name", "nope")
    assert done.returncode == 1 and "after_one" in done.stderr and not new_dir.exists()
    done = pgfleet_cli("restore", str(backup_dir), "--dir", str(new_dir), "--target-time", between)
    assert done.returncode == 0, done.stderr
    assert "at after_one" in done.stdout and "pgfleet_rt_t1 on" in done.stdout
    restored = LocalCluster.load(new_dir)
    with _restored_fleet(new_dir) as rfleet:
        rconn = rfleet.conn()
        rconn.execute(f'SET search_path = "{schema}"'.encode())
        assert _summary(rconn, "ledger", "amount") == recorded[1]
        # the decided commits (decision row 'commit', committed coordinator xid) applied; the others not
        assert _summary(rconn)[:2] == (recorded[0][0], recorded[0][1] + 7 + 11)
        balances = dict(rconn.execute("SELECT id, balance FROM accounts WHERE id <= 6").fetchall())
        assert balances == {1: START_BALANCE + 7, 2: START_BALANCE, 3: START_BALANCE + 11, 4: START_BALANCE,
                            5: 5, 6: START_BALANCE}
        assert rconn.execute("SELECT count(*) FROM pgfleet.commit_decisions").fetchone() == (0,)
        for worker in ("w1", "w2"):
            with connect(restored.endpoint(worker)) as wconn:
                assert wconn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone() == (0,)
                assert _summary(wconn, f'"{schema}".ledger', "amount") == recorded[1]

    restored.destroy()
    manifest = json.loads((backup_dir / "pgfleet-backup.json").read_text())
    complete = next(w["name"] for w in manifest["nodes"][1]["wal"] if not w["name"].endswith(".partial"))
    with (backup_dir / "wal" / manifest["nodes"][1]["name"] / complete).open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff\xff\xff")
    done = pgfleet_cli("restore", str(backup_dir), "--dir", str(new_dir))
    assert done.returncode == 1
    assert "missing or damaged" in done.stderr and not new_dir.exists()
