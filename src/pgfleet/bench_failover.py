"""`pgfleet bench-failover`: how long the fleet is unavailable for writes when a primary dies, and how
many acknowledged commits are lost.

A cluster with a coordinator, 2 workers, and a synchronous standby for the coordinator and for w1 is
started, with the monitor at its defaults (a check every second, failover after 3 s without an
answer), and its router (what ``pgfleet dsn`` names). A client writes one row per statement through the
router, as simple-protocol statements with the key, so the router sends each straight to the worker
that owns the row (the coordinator trial's writes go to any worker); it keeps a ledger of acknowledged
ids and reconnects after an error. In each trial the primary
is killed (SIGKILL of the postmaster and its backends). The trial measures the time to the first
acknowledged write after the kill, checks every acknowledged id, rejoins the old primary as a standby
for the next trial, and then counts the members of every group that accept writes (must be 1).
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from .cluster.fleet import Fleet
from .ha.monitor import Monitor
from .ha.rejoin import rejoin
from .ha.standby import add_standby
from .cluster.local import LocalCluster
from .cluster.router import Router
from .errors import PgfleetError
from .router.process import dsn as router_dsn
from .router.process import read_status, start_background
from .execute.connect import connect
from .spec import DistributeSpec, HashSpec, QualifiedName

Say = Callable[[str], None]


class _Writer:
    def __init__(self, dsn: str, ids: Iterator[int]) -> None:
        self.dsn, self.ids = dsn, ids
        self.acked: list[int] = []
        self.ack_times: list[float] = []
        self.started: list[float] = []  # when each acknowledged statement was sent
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        pending = next(self.ids)
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if conn is None or conn.closed:
                    # the timeout as a startup setting: a SET would keep the session on the coordinator
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2,
                                           options="-c statement_timeout=5s", cursor_factory=psycopg.ClientCursor)
                conn.execute("INSERT INTO led VALUES (%s)", (pending,))
                ok = True
            except psycopg.errors.UniqueViolation:
                ok = True  # an earlier attempt committed though its answer was lost
            except psycopg.Error:
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            if ok:
                self.acked.append(pending)
                self.ack_times.append(time.monotonic())
                self.started.append(sent)
                pending = next(self.ids)
        if conn is not None:
            conn.close()


@dataclass
class Trial:
    target: str
    killed: str
    promoted: str
    seconds_to_first_write: float
    unavailable_s: float  # the longest time without an acknowledged write, from the last one before the kill
    acknowledged: int
    lost: int
    writable: dict[str, int]  # per group, members accepting writes after the trial (must be 1 each)


def _keys_for(local: LocalCluster, node: str | None) -> Iterator[int]:
    fleet = Fleet(local.endpoint("coord"), local)
    router = Router(fleet)
    key = int(time.time() * 1000) % 10**9 * 1000
    try:
        while True:
            key += 1
            if node is None or router.route("public.led", key).node == node:
                yield key
    finally:
        router.close()
        fleet.close()


def _trial(local: LocalCluster, endpoint: str, group: str, say: Say) -> Trial:
    local.reload_spec()
    victim = local.spec.primary_of(group).name
    writer = _Writer(endpoint, _keys_for(local, group if group != "coord" else None))
    writer.thread.start()
    deadline = time.monotonic() + 20
    while len(writer.acked) < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    local.server(victim).kill()
    killed = time.monotonic()
    deadline = killed + 60
    while time.monotonic() < deadline:
        local.reload_spec()
        if local.spec.primary_of(group).name != victim and writer.started and writer.started[-1] > killed:
            break
        time.sleep(0.02)
    # the first write sent after the death: one in flight at the kill may still have been acknowledged
    first = next((done for sent, done in zip(writer.started, writer.ack_times, strict=True) if sent > killed), None)
    time.sleep(0.5)
    writer.stop.set()
    writer.thread.join(30)
    present = _present(local, writer.acked)
    lost = sum(1 for i in writer.acked if i not in present)
    local.reload_spec()
    promoted = local.spec.primary_of(group).name
    seconds = (first - killed) if first is not None else float("inf")
    unavailable = _longest_gap(writer.ack_times, killed)
    say(f"  {group}: killed {victim}, {promoted} promoted, first write after {seconds:.2f} s, writes stopped for "
        f"{unavailable:.2f} s, {len(writer.acked)} acknowledged, {lost} lost")
    rejoin(local, victim)
    writable = writable_per_group(local)
    say(f"  {group}: {victim} rejoined; writable members per group: "
        + ", ".join(f"{g} {n}" for g, n in writable.items()))
    return Trial(group, victim, promoted, seconds, unavailable, len(writer.acked), lost, writable)


def _present(local: LocalCluster, ids: list[int], wait: float = 30.0) -> set[int]:
    """The ids found through the coordinator. Writes through the router resume as soon as the promoted
    worker answers, which can be before the failover has repointed the coordinator's foreign server:
    until then reading through the coordinator fails, so it is retried."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with psycopg.connect(local.dsn(), autocommit=True, connect_timeout=5) as conn:
                rows = conn.execute("SELECT id FROM led WHERE id = ANY(%s)", (ids,)).fetchall()
            return {int(r[0]) for r in rows}
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _longest_gap(ack_times: list[float], killed: float) -> float:
    """The longest stretch without an acknowledged write around the kill: from the last acknowledgement
    before it through the ones after. A write the router sends straight to a worker may still be
    acknowledged just after the coordinator died; the session ends a moment later and the next
    writes wait for the failover, which this gap measures and the first write after the kill does not."""
    before = [t for t in ack_times if t <= killed]
    times = [before[-1] if before else killed, *(t for t in ack_times if t > killed)]
    return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


def writable_per_group(local: LocalCluster) -> dict[str, int]:
    """How many members of each group accept writes (answer and are not in recovery)."""
    local.reload_spec()
    counts = {}
    for group in local.spec.groups:
        counts[group] = 0
        for member in local.spec.members(group):
            try:
                with connect(local.member_endpoint(member.name), timeout=2) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                counts[group] += row is not None and row[0] is False
            except (PgfleetError, psycopg.Error):
                pass
    return counts


def run_failover_bench(trials: int, out: Path, say: Say) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="pgfleet-failover-", dir="/tmp"))
    os.chmod(root, 0o755)
    local = LocalCluster.create(root / "ha", workers=2, fast=True)
    started = time.time()
    routed = 0
    results: list[Trial] = []
    stop = threading.Event()
    try:
        with Fleet(local.endpoint("coord"), local) as fleet:
            fleet.register_local_workers()
            for group in ("coord", "w1"):
                add_standby(local, group)
            fleet.conn().execute("CREATE TABLE led (id bigint PRIMARY KEY)")
            fleet.distribute(DistributeSpec(QualifiedName("public", "led"), "id", HashSpec(8)))
        router, _ = start_background(local, route=True, processes=1)
        endpoint = router_dsn(local, router.port)
        monitor = Monitor(local, interval=1.0, timeout=3.0)
        thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
        thread.start()
        say(f"{trials} trials per target; monitor: check every 1 s, failover after 3 s; clients through the "
            f"router on port {router.port}")
        for target in ("w1", "coord"):
            for _ in range(trials):
                results.append(_trial(local, endpoint, target, say))
        time.sleep(1.2)  # the router's status file is refreshed every second
        state = read_status(local)
        routed = state.counters.get("routed", 0) if state else 0
        say(f"router: {routed} statements routed to a worker, {state.to_coordinator if state else '?'} to the coordinator "
            f"({state.counters.get('routing_fallbacks', 0) if state else '?'} of them routable: fallbacks)")
        stop.set()
        thread.join(30)
    finally:
        stop.set()
        local.destroy()
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for target in ("w1", "coord"):
        times = [t.seconds_to_first_write for t in results if t.target == target]
        gaps = [t.unavailable_s for t in results if t.target == target]
        summary["worker" if target == "w1" else "coordinator"] = {
            "median_s": statistics.median(times), "max_s": max(times), "trials": len(times),
            "unavailable_median_s": statistics.median(gaps), "unavailable_max_s": max(gaps),
            "acknowledged": sum(t.acknowledged for t in results if t.target == target),
            "lost": sum(t.lost for t in results if t.target == target),
            "writable_per_group": sorted({n for t in results if t.target == target for n in t.writable.values()})}
    report = {"elapsed_seconds": round(time.time() - started, 1), "summary": summary,
              "trials": [t.__dict__ for t in results], "router_routed_statements": routed,
              "settings": {"interval_s": 1.0, "timeout_s": 3.0, "replication": "synchronous (ANY 1)",
                           "endpoint": "the router (pgfleet dsn), simple protocol, routing on"}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "failover.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
