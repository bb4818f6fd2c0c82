"""The router is the cluster's endpoint: ``pgfleet up`` starts it on a port it keeps, ``pgfleet dsn``,
``psql`` and ``pgbench`` go through it, ``down`` stops it, a router that died comes back with ``up`` or
the monitor; after a failover it sends statements to the new primaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import pgfleet_cli
from pgfleet.cluster.local import LocalCluster
from pgfleet.ha.events import read_events
from pgfleet.ha.monitor import Monitor
from pgfleet.node.server import process_alive
from pgfleet.router.files import read_settings
from pgfleet.router.process import dsn as router_dsn
from pgfleet.router.process import read_status, running, start_background
from test_ha import _promoted, ha_cluster, keys_on, running_monitor, wait_for

pytestmark = pytest.mark.cluster


def _router_state(directory: Path) -> dict[str, object]:
    time.sleep(1.2)  # the status files are refreshed every second
    state: dict[str, object] = json.loads(pgfleet_cli("status", "--json", directory=directory).stdout)["router"]
    return state


def _counter(state: dict[str, object], name: str) -> int:
    return int(str(state[name]))


def _kill_router(local: LocalCluster) -> int:
    proc = running(local)
    assert proc is not None
    for pid in proc.pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: running(local) is None, 10, "the router to die")
    return proc.port


def test_up_starts_the_router_and_clients_use_it(base_dir: Path) -> None:
    d = base_dir / "endpoint"
    up = pgfleet_cli("up", "--workers", "1", "--fast", directory=d)
    assert up.returncode == 0, up.stderr
    local = LocalCluster.load(d)
    proc = running(local)
    assert proc is not None
    coord_port = local.spec.coordinator.port
    assert f"endpoint: the router on 127.0.0.1:{proc.port} (coordinator on 127.0.0.1:{coord_port}" in up.stdout
    try:
        dsn = pgfleet_cli("dsn", directory=d)
        assert dsn.stdout.strip() == router_dsn(local, proc.port) and dsn.stderr == ""
        coord = pgfleet_cli("dsn", "--node", "coord", directory=d).stdout.strip()
        assert f"127.0.0.1:{coord_port}/" in coord
        password = local.spec.coordinator.password
        with_password = pgfleet_cli("dsn", "--with-password", directory=d).stdout.strip()
        assert f":{proc.port}/" in with_password and "passfile" not in with_password
        with psycopg.connect(dsn.stdout.strip(), autocommit=True) as conn:  # through the router to the coordinator
            assert conn.execute("SELECT current_setting('port')::int").fetchone() == (coord_port,)
            assert conn.info.port == proc.port
            conn.execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
        assert pgfleet_cli("distribute", "kv", "--key", "k", "--shards", "2", directory=d).returncode == 0
        before = _router_state(d)
        assert before["port"] == proc.port and before["pid"] == proc.pid
        ps = pgfleet_cli("psql", "-At", "-c", "INSERT INTO kv VALUES (7, 'seven')", "-c",
                         "SELECT v FROM kv WHERE k = 7", directory=d)
        assert ps.returncode == 0 and ps.stdout.split() == ["INSERT", "0", "1", "seven"], ps.stderr
        after = _router_state(d)
        assert _counter(after, "clients_total") == _counter(before, "clients_total") + 1
        assert _counter(after, "routed") == _counter(before, "routed") + 2  # both single-shard: on w1
        direct = pgfleet_cli("psql", "--node", "coord", "-At", "-c", "SELECT current_setting('port')", directory=d)
        assert direct.stdout.strip() == str(coord_port)
        assert _counter(_router_state(d), "clients_total") == _counter(after, "clients_total")
        bench = pgfleet_cli("pgbench", "-n", "-t", "3", "-f", "/dev/stdin", directory=d, input="SELECT v FROM kv WHERE k = 7;\n")
        assert bench.returncode == 0 and "number of transactions actually processed: 3" in bench.stdout, bench.stderr
        assert _counter(_router_state(d), "clients_total") > _counter(after, "clients_total")
        for text in (up.stdout, up.stderr, dsn.stdout, ps.stdout):
            assert password not in text

        # a router that died: dsn says so and hands out the coordinator; up starts it again on its port
        port = _kill_router(local)
        fallback = pgfleet_cli("dsn", directory=d)
        assert f"127.0.0.1:{coord_port}/" in fallback.stdout and "the router is not running" in fallback.stderr
        again = pgfleet_cli("up", directory=d)
        assert "started router" in again.stdout and f"the router on 127.0.0.1:{port} " in again.stdout, again.stdout
        # and the monitor does the same every round
        port = _kill_router(local)
        Monitor(local).check_once()
        restarted = running(local)
        assert restarted is not None and restarted.port == port, [(e.kind, e.detail) for e in read_events(local)]
        assert any(e.kind == "router-restarted" for e in read_events(local))
        with psycopg.connect(dsn.stdout.strip(), autocommit=True) as conn:  # the string from before still works
            assert conn.execute("SELECT v FROM kv WHERE k = 7").fetchone() == ("seven",)

        down = pgfleet_cli("down", directory=d)
        assert "router stopped" in down.stderr and running(local) is None
        Monitor(local).check_once()  # stopped is not died: the monitor leaves it stopped
        assert running(local) is None
        assert pgfleet_cli("up", "--no-router", directory=d).returncode == 0 and running(local) is None
        assert "the router is not running" in pgfleet_cli("dsn", directory=d).stderr
        up_again = pgfleet_cli("up", directory=d)
        assert f"the router on 127.0.0.1:{port} " in up_again.stdout, up_again.stdout  # the kept port
        kept = pgfleet_cli("up", "--no-router", directory=d)  # leaves a running router alone, and says so
        assert "the router keeps running" in kept.stderr and f"the router on 127.0.0.1:{port} " in kept.stdout
        assert running(local) is not None
        settings = read_settings(d)
        assert settings is not None and settings.port == port and settings.route
    finally:
        last = running(local)
        assert pgfleet_cli("down", "--destroy", directory=d).returncode == 0
    assert last is not None
    assert not any(process_alive(pid) for pid in last.pids)  # (a zombie nobody reaped is not alive)


def _simple(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    """A client whose statements go as simple-protocol queries (what the router routes today)."""
    return psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=5)


def _answers(dsn: str) -> bool:
    try:
        with _simple(dsn) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.Error:
        return False


@pytest.fixture
def routed_cluster(base_dir: Path, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    group = request.param
    with ha_cluster(base_dir, f"endpoint_{group}", (group,)) as local:
        start_background(local, route=True, processes=1)
        yield local  # destroying the cluster stops its router


@pytest.mark.slow
@pytest.mark.parametrize("routed_cluster", ["w1"], indirect=True)
def test_router_follows_a_worker_failover(routed_cluster: LocalCluster) -> None:
    local = routed_cluster
    proc = running(local)
    assert proc is not None
    keys = keys_on(local, "w1")
    with running_monitor(local), _simple(router_dsn(local, proc.port)) as conn:
        conn.execute(f"INSERT INTO led VALUES ({next(keys)}, 'before')")
        local.server("w1").kill()
        wait_for(lambda: _promoted(local, "w1", "w1_s1"), 30, "the failover", local)
        wait_for(lambda: read_status(local) is not None, 5, "a status file")
        before = read_status(local)
        assert before is not None
        errors: list[str] = []
        deadline = time.monotonic() + 20
        key = next(keys)
        while True:  # the same session, never reconnected: at most the first statements meet the failover
            try:
                conn.execute(f"INSERT INTO led VALUES ({key}, 'after')")
                break
            except psycopg.errors.UniqueViolation:
                break  # a statement lost in flight had run after all
            except psycopg.Error as exc:
                assert not conn.closed, exc
                errors.append(str(exc).splitlines()[0])
                assert time.monotonic() < deadline, errors
                time.sleep(0.2)
        for _ in range(5):
            key = next(keys)
            conn.execute(f"INSERT INTO led VALUES ({key}, 'after')")
        assert conn.execute(f"SELECT note FROM led WHERE id = {key}").fetchone() == ("after",)
        time.sleep(1.2)
        after = read_status(local)
        assert after is not None
        assert after.counters["routed"] >= before.counters["routed"] + 6, (before, after, errors)
    with psycopg.connect(local.member_endpoint("w1_s1").conninfo()) as direct:  # the rows are on the new primary
        shards = direct.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                "WHERE tablename LIKE 'led\\_%'").fetchall()
        count = sum(direct.execute(f"SELECT count(*) FROM {s[0]} WHERE id = {key}").fetchone()[0]  # type: ignore[index]
                    for s in shards)
    assert count == 1


@pytest.mark.slow
@pytest.mark.parametrize("routed_cluster", ["coord"], indirect=True)
def test_router_after_a_coordinator_failover(routed_cluster: LocalCluster) -> None:
    local = routed_cluster
    proc = running(local)
    assert proc is not None
    dsn = router_dsn(local, proc.port)
    # The session's coordinator backend dies without a word. The session is pinned to the coordinator
    # (set_config changed its state), so the router does not log it in again: it ends the session with its own
    # 57P01 telling the client to reconnect.
    with _simple(dsn) as session:
        backend = session.execute("SELECT pg_backend_pid(), set_config('pgfleet_test.pinned', 'yes', false)"
                                  ).fetchone()[0]  # type: ignore[index]
        os.kill(backend, signal.SIGKILL)
        time.sleep(0.3)
        with pytest.raises(psycopg.errors.AdminShutdown) as lost:
            session.execute("SELECT 1")
    assert "pgfleet router: the connection to the coordinator" in str(lost.value), lost.value
    assert lost.value.diag.message_hint is not None and "reconnect" in lost.value.diag.message_hint
    wait_for(lambda: _answers(dsn), 20, "the coordinator's crash recovery")
    with running_monitor(local), _simple(dsn) as old:
        assert old.execute("SELECT 1").fetchone() == (1,)
        local.server("coord").kill()
        wait_for(lambda: _promoted(local, "coord", "coord_s1"), 30, "the failover", local)
        new_port = local.spec.primary_of("coord").port
        # The session was idle and holds no session state: the router logs it in again on the promoted
        # coordinator (reconnect.py) and it goes on without reconnecting, whether its backend went without a
        # word or first sent its own FATAL (57P01, "unexpected postmaster exit"), which the router holds back.
        found = old.execute("SELECT current_setting('port')::int, pg_is_in_recovery()").fetchone()
        assert found == (new_port, False)
        old.execute("INSERT INTO led VALUES (0, 'same session')")
        deadline = time.monotonic() + 20
        while True:  # a new connection through the same string reaches the promoted coordinator
            try:
                with _simple(dsn) as conn:
                    assert conn.execute("SELECT current_setting('port')::int, pg_is_in_recovery()").fetchone() == (
                        new_port, False)
                    conn.execute("INSERT INTO led VALUES (1, 'after')")
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline
                time.sleep(0.2)


def test_a_stale_pid_file_never_signals_another_program(tmp_path: Path) -> None:
    """Pids are reused: a router pid file whose process died may name another program by now. pgfleet
    takes it for a dead router (up and the monitor start a new one) and never signals that program."""
    from pgfleet.router.files import died, terminate
    from pgfleet.router.files import running as running_in

    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "router.pid").write_text(f"{stranger.pid} 6999\n")
        assert running_in(tmp_path) is None and died(tmp_path)
        assert terminate(tmp_path, wait=1) is None
        assert stranger.poll() is None  # not signalled
        assert not (tmp_path / "router.pid").exists()
    finally:
        stranger.kill()
        stranger.wait()
