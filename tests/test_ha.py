"""Standbys, failover, switchover and rejoin: fault tests that kill and isolate real servers.

Every test keeps a ledger of the commits its client saw acknowledged and checks that each one is
present afterwards.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from conftest import make_cluster, pgfleet_cli
from pgfleet.cluster.fleet import Fleet
from pgfleet.ha.events import read_events
from pgfleet.ha.failover import switchover
from pgfleet.ha.maintenance import under_maintenance
from pgfleet.ha.monitor import Monitor
from pgfleet.ha.rejoin import rejoin
from pgfleet.ha.standby import add_standby, replication_status
from pgfleet.cluster.local import LocalCluster
from pgfleet.cluster.aggregate import aggregate
from pgfleet.cluster.router import Router
from pgfleet.cluster.shard_pool import ShardPool
from pgfleet.errors import SpecError, TopologyError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from typing import Any, Self


@contextlib.contextmanager
def ha_cluster(base_dir: Path, name: str, standbys_on: tuple[str, ...]) -> Iterator[LocalCluster]:
    local = make_cluster(base_dir / name, workers=2)
    try:
        for group in standbys_on:
            add_standby(local, group)
        fleet = Fleet(local.endpoint("coord"), local)
        fleet.conn().execute("CREATE TABLE led (id bigint PRIMARY KEY, note text)")
        fleet.distribute(DistributeSpec(QualifiedName("public", "led"), "id", HashSpec(4)))
        fleet.close()
        yield local
    finally:
        local.destroy()


@contextlib.contextmanager
def running_monitor(local: LocalCluster) -> Iterator[Monitor]:
    # its own view of the cluster, as the monitor process has: the test thread re-reads cluster.json into
    # ``local`` (reload_spec) while a failover in the monitor's thread changes it, and one shared object
    # let a stale read undo the failover's new primary mid-way
    monitor = Monitor(LocalCluster.load(local.directory), interval=0.5, timeout=2.0)
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield monitor
    finally:
        stop.set()
        thread.join(30)


class Writer:
    """Inserts ids one by one through ``dsn``, reconnecting on errors; keeps the acknowledged ones."""

    def __init__(self, dsn: str, ids: Iterator[int], note: str = "w") -> None:
        self.dsn, self.ids, self.note = dsn, ids, note
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        conn = None
        pending = next(self.ids)
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                    conn.execute("SET statement_timeout = '5s'")
                conn.execute("INSERT INTO led VALUES (%s, %s)", (pending, self.note))
                self.acked.append(pending)
                self.ack_times.append(time.monotonic())
                pending = next(self.ids)
            except psycopg.errors.UniqueViolation:
                # an earlier attempt of this id committed although its answer was lost: it is there
                self.acked.append(pending)
                self.ack_times.append(time.monotonic())
                pending = next(self.ids)
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def keys_on(local: LocalCluster, node: str) -> Iterator[int]:
    fleet = Fleet(local.endpoint("coord"), local)
    router = Router(fleet)
    key = 0
    try:
        while True:
            key += 1
            if router.route("public.led", key).node == node:
                yield key
    finally:
        router.close()
        fleet.close()


def wait_for(predicate: object, timeout: float, what: str, local: LocalCluster | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    events = "\n".join(f"{e.time} {e.node} {e.kind} {e.detail}" for e in read_events(local)) if local else ""
    raise AssertionError(f"timed out waiting for {what}\n{events}\n{_thread_stacks()}")


def _thread_stacks() -> str:
    """Where the other threads of this process are (the monitor's thread, when a failover hangs)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    return "\n".join(f"--- thread {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame)[-12:])
                     for ident, frame in sys._current_frames().items() if ident != me)


def missing(local: LocalCluster, ids: list[int]) -> list[int]:
    with psycopg.connect(local.dsn(), autocommit=True) as conn:
        present = {r[0] for r in conn.execute("SELECT id FROM led WHERE id = ANY(%s)", (ids,)).fetchall()}
    return [i for i in ids if i not in present]


def test_standby_status_and_dsn(base_dir: Path) -> None:
    with ha_cluster(base_dir, "ha_status", ("coord",)) as local:
        proc = pgfleet_cli("standby", "add", "w1", "--async", directory=local.directory)
        assert proc.returncode == 0, proc.stderr
        status = {(s.node, s.member): s for s in replication_status(local)}
        assert status[("coord", "coord_s1")].state == "streaming"
        assert status[("coord", "coord_s1")].sync_state in ("sync", "quorum")
        assert status[("w1", "w1_s1")].sync_state == "async"
        st = json.loads(pgfleet_cli("status", "--json", directory=local.directory).stdout)
        assert {s["member"] for s in st["standbys"]} == {"coord_s1", "w1_s1"}
        assert all(s["lag_bytes"] is not None for s in st["standbys"])
        dsn = pgfleet_cli("dsn", directory=local.directory).stdout.strip()
        assert "target_session_attrs=read-write" in dsn and dsn.count("127.0.0.1:") == 2
        ro = pgfleet_cli("dsn", "--read-only", directory=local.directory).stdout.strip()
        with psycopg.connect(ro) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        events = pgfleet_cli("events", directory=local.directory).stdout
        assert "standby-added" in events and "w1_s1" in events
        # bad input: one clear error, nothing changed
        with pytest.raises(SpecError, match="unknown node 'w9'"):
            add_standby(local, "w9")
        with pytest.raises(SpecError, match="w1_s1 is not a standby of coord"):
            switchover(local, "coord", "w1_s1")
        with pytest.raises(TopologyError, match="bytes behind"):
            switchover(local, "coord", max_lag_bytes=-1)
        with pytest.raises(SpecError, match="is the primary of w1"):
            rejoin(local, "w1")
        assert local.spec.primary_of("coord").name == "coord"
        # a standby that cannot be created (its primary is down): one clear line, nothing left behind
        local.server("w2").stop()
        try:
            proc = pgfleet_cli("standby", "add", "w2", directory=local.directory)
            errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
            assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
            assert len(errors) == 1 and "node w2: cannot connect to 127.0.0.1" in errors[0], proc.stderr
            assert "Connection refused" in errors[0] and "pgfleet up" in errors[0], errors[0]
            local.reload_spec()
            assert local.spec.members("w2") == [local.node("w2")]
            assert not (local.directory / "nodes" / "w2_s1").exists()
        finally:
            local.server("w2").start()
        # the monitor in the background: started, recorded, stopped
        started = pgfleet_cli("monitor", "--background", directory=local.directory)
        assert started.returncode == 0 and "pid" in started.stdout, started.stderr
        wait_for(lambda: any(e.kind == "started" for e in read_events(local)), 20, "the monitor to start", local)
        stopped = pgfleet_cli("monitor", "--stop", directory=local.directory)
        assert stopped.returncode == 0 and "monitor stopped" in stopped.stdout
        wait_for(lambda: any(e.kind == "stopped" for e in read_events(local)), 20, "the monitor to stop", local)


def test_worker_primary_killed_while_writing(base_dir: Path) -> None:
    with ha_cluster(base_dir, "ha_worker", ("w1",)) as local, running_monitor(local), \
            Fleet(local.endpoint("coord"), local) as fleet, Router(fleet) as router, ShardPool(fleet) as pool:
        with Writer(local.dsn(), keys_on(local, "w1")) as writer:
            wait_for(lambda: len(writer.acked) >= 20, 20, "first writes")

            def fast_reads() -> tuple[int, Any]:  # the fast paths hold connections to w1's primary
                key = writer.acked[-1]
                return (aggregate(fleet, "public.led", [("count", None)], pool=pool)[0][0],
                        router.fetchone("SELECT id FROM {} WHERE id = %s", (key,), table="public.led", key=key))

            assert fast_reads()[1] is not None
            local.server("w1").kill()
            killed = time.monotonic()
            wait_for(lambda: _promoted(local, "w1", "w1_s1"), 30, "the failover", local)
            promoted = time.monotonic()
            wait_for(lambda: writer.ack_times and writer.ack_times[-1] > promoted, 30, "writes to resume", local)
            resumed = writer.ack_times[-1] - killed
            wait_for(lambda: len([t for t in writer.ack_times if t > killed]) >= 20, 20, "more writes")
        # A Router and a ShardPool made before the failover follow it: connections broken by the kill
        # fail one call of each at most, the next connects to the promoted standby.
        errors = []
        for _attempt in range(3):
            try:
                count, row = fast_reads()
                break
            except psycopg.OperationalError as exc:
                errors.append(exc)
        else:
            raise AssertionError(f"the fast paths did not recover: {errors}")
        with psycopg.connect(local.dsn()) as conn:
            assert count == conn.execute("SELECT count(*) FROM led").fetchone()[0]  # type: ignore[index]
        assert row == (writer.acked[-1],)
        assert missing(local, writer.acked) == []
        assert local.spec.primary_of("w1").name == "w1_s1"
        kinds = [e.kind for e in read_events(local) if e.node == "w1"]
        assert "failover-done" in kinds and "fenced" in kinds
        assert resumed < 15, resumed
        rejoin(local, "w1")
        status = {s.member: s for s in replication_status(local)}
        assert status["w1"].state == "streaming"


def test_coordinator_primary_killed_while_writing(base_dir: Path) -> None:
    with ha_cluster(base_dir, "ha_coord", ("coord",)) as local, running_monitor(local):
        dsn = local.dsn()
        with Writer(dsn, iter(range(1, 10**9))) as writer:
            wait_for(lambda: len(writer.acked) >= 20, 20, "first writes")
            local.server("coord").kill()
            time.monotonic()
            # the whole failover: the catalog is repointed after the spec names the new primary
            wait_for(lambda: _promoted(local, "coord", "coord_s1"), 60, "the failover", local)
            promoted = time.monotonic()
            wait_for(lambda: len([t for t in writer.ack_times if t > promoted]) >= 20, 40, "writes to resume", local)
        assert local.spec.primary_of("coord").name == "coord_s1", [(e.node, e.kind, e.detail) for e in read_events(local)]
        assert missing(local, writer.acked) == []
        with psycopg.connect(dsn) as conn:  # the same string now reaches the promoted coordinator
            assert conn.execute("SELECT port FROM pgfleet.nodes WHERE name = 'coord'").fetchone() == (
                local.spec.primary_of("coord").port,)


class Proxy:
    """A TCP proxy in front of a server: the network path the coordinator and the monitor use."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.close()

    def stop_forwarding(self) -> None:
        self.cut = True
        self.listener.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_isolated_primary_never_loses_an_acknowledged_write(base_dir: Path) -> None:
    """w1's primary stays alive but the coordinator and the monitor reach it only through a proxy that
    stops forwarding. A rogue client still connected straight to it keeps writing. The monitor must fence
    it and promote the standby; every write either side saw acknowledged must survive."""
    with ha_cluster(base_dir, "ha_isolated", ("w1",)) as local:
        old = local.spec.primary_of("w1")
        proxy = Proxy(old.port)
        with psycopg.connect(local.endpoint("coord").conninfo(), autocommit=True) as coord:
            coord.execute(sql.SQL("ALTER SERVER pgfleet_w1 OPTIONS (SET port {})").format(sql.Literal(str(proxy.port))))
            coord.execute("UPDATE pgfleet.nodes SET port = %s WHERE name = 'w1'", (proxy.port,))
        table = _shard_of(local, "w1")
        with running_monitor(local), Writer(local.dsn(), keys_on(local, "w1")) as writer, \
                RogueWriter(local.member_endpoint("w1").conninfo(), table) as rogue:
            wait_for(lambda: len(writer.acked) >= 20 and len(rogue.acked) >= 5, 20, "first writes")
            proxy.stop_forwarding()
            wait_for(lambda: _promoted(local, "w1", "w1_s1"), 30, "the failover", local)
            promoted = time.monotonic()
            wait_for(lambda: len([t for t in writer.ack_times if t > promoted]) >= 10, 30, "writes to resume", local)
        assert not local.server("w1").is_running(), "the old primary was not fenced"
        writable = []
        for m in local.spec.members("w1"):
            if local.server(m.name).is_running():
                with psycopg.connect(local.member_endpoint(m.name).conninfo()) as conn:
                    if conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,):
                        writable.append(m.name)
        assert writable == ["w1_s1"]
        assert missing(local, writer.acked) == []
        with psycopg.connect(local.member_endpoint("w1_s1").conninfo()) as conn:
            present = {r[0] for r in conn.execute(
                sql.SQL("SELECT id FROM {} WHERE note = 'rogue'").format(sql.SQL(table))).fetchall()}
        assert set(rogue.acked) <= present, "a write acknowledged by the isolated primary was lost"


class RogueWriter(Writer):
    """Writes into one shard table of the old primary directly, bypassing the coordinator."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(dsn, iter(()), "rogue")
        self.table = table

    def run(self) -> None:
        conn = None
        candidate = 10**7
        while not self.stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                    conn.execute("SET statement_timeout = '3s'")
                conn.execute(sql.SQL("INSERT INTO {} (id, note) VALUES (%s, 'rogue')").format(sql.SQL(self.table)),
                             (candidate,))
                self.acked.append(candidate)
                self.ack_times.append(time.monotonic())
            except psycopg.errors.CheckViolation:
                pass  # that id belongs to another shard
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            candidate += 1
        if conn is not None:
            conn.close()


def _promoted(local: LocalCluster, group: str, member: str) -> bool:
    """``member`` is ``group``'s primary and the failover is over (standbys and the catalog repointed)."""
    local.reload_spec()
    if local.spec.primary_of(group).name != member or under_maintenance(local, group):
        return False
    mine = [e.kind for e in read_events(local) if e.node == group and e.kind.startswith("failover-")]
    return bool(mine) and mine[-1] == "failover-done"


def _shard_of(local: LocalCluster, node: str) -> str:
    fleet = Fleet(local.endpoint("coord"), local)
    try:
        shard = next(s for t in fleet.topology().tables for s in t.shards if s.node == node)
        return f'"{shard.shard_schema}"."{shard.shard_table}"'
    finally:
        fleet.close()


def test_switchover_loses_nothing(base_dir: Path) -> None:
    with ha_cluster(base_dir, "ha_switch", ("w1",)) as local:
        with Writer(local.dsn(), keys_on(local, "w1")) as writer:
            wait_for(lambda: len(writer.acked) >= 20, 20, "first writes")
            proc = pgfleet_cli("switchover", "w1", directory=local.directory)
            assert proc.returncode == 0, proc.stderr
            done = time.monotonic()
            wait_for(lambda: writer.ack_times and writer.ack_times[-1] > done, 20, "writes after the switchover")
        local.reload_spec()
        assert local.spec.primary_of("w1").name == "w1_s1"
        assert missing(local, writer.acked) == []
        status = {s.member: s for s in replication_status(local)}
        assert status["w1"].state == "streaming" and status["w1"].sync_state in ("sync", "quorum")
        assert any(e.kind == "switchover-done" for e in read_events(local))
