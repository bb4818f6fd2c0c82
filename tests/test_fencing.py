"""Fencing that outlives the process: a failed-over primary never serves writes again, whether
`pgfleet up` runs, someone starts it by hand, or a client still holds its old address."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import pgfleet_cli
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import NodeError
from pgfleet.ha.events import read_events
from pgfleet.ha.monitor_proc import stop_background
from test_ha import RogueWriter, Writer, _promoted, _shard_of, ha_cluster, missing, running_monitor, wait_for


def writable_members(local: LocalCluster) -> dict[str, set[str]]:
    """Per group, the members that accept a connection and are not in recovery."""
    out: dict[str, set[str]] = {}
    for group in local.spec.groups:
        out[group] = set()
        for m in local.spec.members(group):
            try:
                with psycopg.connect(local.member_endpoint(m.name).conninfo(), connect_timeout=1) as conn:
                    if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                        out[group].add(m.name)
            except psycopg.Error:
                pass
    return out


@contextlib.contextmanager
def background_monitor_stopped(local: LocalCluster) -> Iterator[None]:
    """'pgfleet up' starts a background monitor for a cluster with standbys: stop it when the test ends."""
    try:
        yield
    finally:
        stop_background(local)


def test_up_starts_a_server_killed_with_sigkill(cluster: LocalCluster) -> None:
    """A killed postmaster nobody reaps stays a zombie that 'pg_ctl status' takes for a running server."""
    cluster.server("w1").kill()
    time.sleep(0.3)
    proc = pgfleet_cli("up", "--no-router", directory=cluster.directory)  # the shared cluster runs no router
    assert proc.returncode == 0, proc.stderr
    assert "started w1" in proc.stdout, proc.stdout + proc.stderr
    with psycopg.connect(cluster.member_endpoint("w1").conninfo(), connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.slow
def test_failed_over_primaries_stay_fenced(base_dir: Path) -> None:
    """The issue's repro for the coordinator and a worker: kill both primaries, let the monitor fail
    over, run 'pgfleet up' while writers hammer the old addresses, and sample for 20 s that each group
    has exactly one writable member, its primary."""
    with ha_cluster(base_dir, "ha_split", ("coord", "w1")) as local, background_monitor_stopped(local), \
            running_monitor(local):
        old_dsn = local.dsn()  # names coord first: clients that copied it before the failover
        table = _shard_of(local, "w1")
        old_w1 = local.member_endpoint("w1").conninfo()
        local.server("coord").kill()
        wait_for(lambda: _promoted(local, "coord", "coord_s1"), 30, "the coordinator failover", local)
        local.server("w1").kill()
        wait_for(lambda: _promoted(local, "w1", "w1_s1"), 30, "the worker failover", local)
        with Writer(old_dsn, iter(range(10**6, 2 * 10**6)), "old-dsn") as writer, RogueWriter(old_w1, table) as rogue:
            proc = pgfleet_cli("up", directory=local.directory)
            assert proc.returncode == 0, proc.stderr
            for member in ("coord", "w1"):
                assert f"{member} was fenced at " in proc.stdout, proc.stdout
                assert f"pgfleet node rejoin {member}" in proc.stdout, proc.stdout
            deadline = time.monotonic() + 20
            samples = 0
            while time.monotonic() < deadline:
                seen = writable_members(local)
                assert seen["coord"] == {"coord_s1"} and seen["w1"] == {"w1_s1"}, seen
                assert seen["w2"] == {"w2"}, seen
                samples += 1
                time.sleep(0.2)
        assert samples >= 20
        assert rogue.acked == [], "the old worker primary accepted writes"
        assert len(writer.acked) > 20 and missing(local, writer.acked) == []
        st = json.loads(pgfleet_cli("status", "--json", directory=local.directory).stdout)
        fenced = {s["member"]: s for s in st["standbys"] if s["state"] == "fenced"}
        assert set(fenced) == {"coord", "w1"}, st["standbys"]
        assert "pgfleet node rejoin w1" in fenced["w1"]["note"]
        # Started by hand, past 'up' and without its standby.signal: the monitor fences it again at once.
        server = local.server("w1")
        (server.datadir / "standby.signal").unlink()
        try:
            server.start()
        except NodeError as exc:  # the monitor can fence it before 'pg_ctl start -w' sees it ready
            assert "shutdown request" in str(exc), exc
        wait_for(lambda: any(e.kind == "rogue-primary-fenced" for e in read_events(local)), 10,
                 "the monitor to fence the rogue primary", local)
        rogue_events = [e for e in read_events(local) if e.kind == "rogue-primary-fenced"]
        assert [e.node for e in rogue_events] == ["w1"] and "w1 (port" in rogue_events[0].detail, rogue_events
        assert not server.is_running()
        assert (server.datadir / "standby.signal").exists()
        assert writable_members(local)["w1"] == {"w1_s1"}
