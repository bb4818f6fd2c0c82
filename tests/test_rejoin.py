"""Rejoin that works whenever it can (pg_rewind, else a fresh base backup), leaves a member stopped and
fenced when it cannot, and 'standby remove'."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Self

import psycopg
import pytest

from conftest import pgfleet_cli
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import PgfleetError
from pgfleet.ha.events import read_events
from pgfleet.ha.failover import failover
from pgfleet.ha.maintenance import under_maintenance
from pgfleet.ha.rejoin import rejoin
from pgfleet.ha.standby import replication_status
from pgfleet.node.fencemark import read_mark
from pgfleet.node.ports import claims_dir
from test_fencing import writable_members
from test_ha import Writer, _promoted, ha_cluster, keys_on, missing, running_monitor, wait_for


def drop_wal_segments(local: LocalCluster, member: str) -> int:
    """What a busy old primary's checkpoints do to the WAL pg_rewind needs: remove it."""
    wal = local.server(member).datadir / "pg_wal"
    segments = [p for p in wal.iterdir() if len(p.name) == 24 and p.is_file()]
    for p in segments:
        p.unlink()
    return len(segments)


def test_rejoin_falls_back_to_a_base_backup_and_fails_cleanly(base_dir: Path) -> None:
    with ha_cluster(base_dir, "ha_rejoin", ("w1",)) as local:
        with Writer(local.dsn(), keys_on(local, "w1")) as writer:
            wait_for(lambda: len(writer.acked) >= 20, 20, "first writes")
            local.server("w1").kill()
            failover(local, "w1", "test: w1 killed")
            wait_for(lambda: len(writer.acked) >= 40, 30, "writes after the failover", local)
        assert drop_wal_segments(local, "w1") > 0
        # pg_rewind cannot work without the old primary's WAL: a fresh base backup does
        proc = pgfleet_cli("node", "rejoin", "w1", directory=local.directory)
        assert proc.returncode == 0, proc.stderr
        assert "w1 follows w1_s1 (by base backup)" in proc.stdout, proc.stdout
        assert "fresh base backup" in proc.stderr
        status = {s.member: s for s in replication_status(local)}
        assert status["w1"].state == "streaming", status
        assert read_mark(local.server("w1")) is None
        assert not (local.server("w1").home / "data.before-rejoin").exists()
        kinds = [e.kind for e in read_events(local) if e.node == "w1"]
        assert kinds[-2:] == ["rejoin-rewind-failed", "rejoined"], kinds
        assert missing(local, writer.acked) == []

        # Both ways fail (no WAL to rewind with, the primary refuses replication connections): the member
        # ends stopped and fenced with its old data directory, one error line, an event.
        failover(local, "w1", "test: back to w1")
        assert drop_wal_segments(local, "w1_s1") > 0
        primary = local.server("w1")
        hba = (primary.datadir / "pg_hba.conf").read_text()
        primary.write_file(primary.datadir / "pg_hba.conf",
                           "\n".join(ln for ln in hba.splitlines() if "replication" not in ln) + "\n")
        primary.reload()
        try:
            proc = pgfleet_cli("node", "rejoin", "w1_s1", directory=local.directory)
        finally:
            primary.write_file(primary.datadir / "pg_hba.conf", hba)
            primary.reload()
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode != 0 and len(errors) == 1, proc.stderr
        assert "w1_s1 could not rejoin w1" in errors[0] and "pgfleet standby remove w1_s1" in errors[0], errors
        assert "LOG:" not in proc.stderr and "FATAL" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        server = local.server("w1_s1")
        assert not server.is_running() and server.exists()
        assert read_mark(server) is not None and (server.datadir / "standby.signal").exists()
        assert not (server.home / "data.before-rejoin").exists()
        assert [e.kind for e in read_events(local)][-1] == "rejoin-failed"
        st = json.loads(pgfleet_cli("status", "--json", directory=local.directory).stdout)
        assert [s["state"] for s in st["standbys"] if s["member"] == "w1_s1"] == ["fenced"]

        # standby remove: not the primary; the fenced member goes with its slot, directory and port
        proc = pgfleet_cli("standby", "remove", "w1", directory=local.directory)
        assert proc.returncode != 0 and "w1 is the primary of w1 and cannot be removed" in proc.stderr, proc.stderr
        port = local.node("w1_s1").port
        proc = pgfleet_cli("standby", "remove", "w1_s1", directory=local.directory)
        assert proc.returncode == 0, proc.stderr
        local.reload_spec()
        assert [m.name for m in local.spec.members("w1")] == ["w1"]
        assert not server.home.exists() and not (claims_dir() / str(port)).exists()
        with psycopg.connect(local.member_endpoint("w1").conninfo()) as conn:
            assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'w1_s1'").fetchone() == (0,)
            assert "w1_s1" not in str(conn.execute("SHOW synchronous_standby_names").fetchone())
        assert read_events(local)[-1].kind == "standby-removed"


class WalChurn:
    """What a busy server does to old WAL, fast: on every primary, switch to a new WAL segment and
    checkpoint, over and over, so that segments not explicitly kept are recycled within a second."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for group in self.local.spec.groups:
                with contextlib.suppress(psycopg.Error, PgfleetError), \
                        psycopg.connect(self.local.endpoint(group).conninfo(), autocommit=True, connect_timeout=1) as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                        conn.execute("SELECT pg_switch_wal()")
                        conn.execute("CHECKPOINT")
            self.stop.wait(0.2)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.mark.slow
def test_ten_kill_failover_rejoin_cycles_under_writes(base_dir: Path) -> None:
    """Alternately the worker's and the coordinator's primary is killed under writes and WAL churn; the
    monitor fails over; the old primary rejoins. Every rejoin must succeed and every acknowledged write
    be present."""
    with ha_cluster(base_dir, "ha_drill", ("coord", "w1")) as local, running_monitor(local):
        with Writer(local.dsn(), iter(range(1, 10**9))) as writer, WalChurn(local):
            wait_for(lambda: len(writer.acked) >= 20, 20, "first writes")
            hows = []
            for cycle in range(10):
                group = ("w1", "coord")[cycle % 2]
                local.reload_spec()
                victim = local.spec.primary_of(group).name
                heir = next(m.name for m in local.spec.standbys(group))
                local.server(victim).kill()
                # (60 s: on a loaded 2-core machine a failover's steps take seconds each; the events say which)
                wait_for(lambda g=group, h=heir: _promoted(local, g, h) and not under_maintenance(local, g), 60,
                         f"cycle {cycle}: failover of {group}", local)
                hows.append(rejoin(local, victim))
                acked = len(writer.acked)
                wait_for(lambda n=acked: len(writer.acked) >= n + 10, 30, f"cycle {cycle}: writes", local)
                assert writable_members(local)[group] == {heir}
        assert len(hows) == 10, hows
        assert missing(local, writer.acked) == []
        status = {s.member: s.state for s in replication_status(local)}
        assert set(status.values()) == {"streaming"}, status
        print(f"rejoins: {hows.count('pg_rewind')} by pg_rewind, {hows.count('base backup')} by base backup; "
              f"{len(writer.acked)} writes acknowledged, {writer.errors} errors")
