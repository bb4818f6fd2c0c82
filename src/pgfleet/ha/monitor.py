"""The monitor: checks every primary about once a second and fails over when one stops answering."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import psycopg

from ..cluster.local import LocalCluster
from ..errors import PgfleetError, TopologyError
from ..execute.connect import Endpoint
from ..plan.failover import GroupSeen, StandbySeen, decide
from .events import Say, record
from .failover import failover
from .fence import fence
from .maintenance import maintenance, under_maintenance
from .replication import connect_to

log = logging.getLogger(__name__)


class Monitor:
    """Checks every primary about every ``interval`` seconds; fails over after ``timeout`` seconds."""

    def __init__(self, local: LocalCluster, *, interval: float = 1.0, timeout: float = 3.0,
                 say: Say | None = None) -> None:
        self.local = local
        self.interval = interval
        self.timeout = timeout
        self.say = say or (lambda _m: None)
        self._down_since: dict[str, float] = {}
        self._reported: dict[str, str] = {}
        self._addresses: dict[str, tuple[str, int]] = {}

    def _address(self, group: str) -> tuple[str, int]:
        """Where the coordinator reaches the group (a worker may be behind a proxy); its primary otherwise."""
        return self._addresses.get(group, ("127.0.0.1", self.local.spec.primary_of(group).port))

    def _refresh_addresses(self) -> None:
        coord = self.local.spec.coordinator
        with contextlib.suppress(PgfleetError, psycopg.Error), connect_to(self.local.endpoint(coord.group_name), 1) as c:
            self._addresses = {str(r[0]): (str(r[1]), int(str(r[2])))
                               for r in c.execute("SELECT name, host, port FROM pgfleet.nodes WHERE role = 'worker'")}

    def _alive(self, group: str) -> bool:
        primary = self.local.spec.primary_of(group)
        host, port = self._address(group)
        ep = Endpoint(group, host, port, self.local.spec.dbname, self.local.spec.superuser, primary.password)
        try:
            with connect_to(ep, timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except (PgfleetError, psycopg.Error):
            return False

    def _writable(self, member: str) -> bool:
        try:
            with connect_to(self.local.member_endpoint(member), timeout=1) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
        except (PgfleetError, psycopg.Error):
            return False

    def _fence_rogues(self, group: str) -> list[str]:
        """Fence every member of ``group`` that accepts writes but is not its primary (an old primary
        started by hand, or by an older pgfleet): two writable members would each take commits."""
        fenced = []
        for member in self.local.spec.standbys(group):
            if not self._writable(member.name):
                continue
            try:
                with maintenance(self.local, group, f"fencing {member.name}"):
                    self.local.reload_spec()  # a switchover may have made it the primary meanwhile
                    primary = self.local.spec.primary_of(group).name
                    if primary == member.name or not self._writable(member.name):
                        continue
                    mark = fence(self.local, member.name, f"found writable while {primary} is the primary")
            except TopologyError:
                continue  # another operation holds the group; the next round looks again
            record(self.local, group, "rogue-primary-fenced",
                   f"{member.name} (port {member.port}) accepted writes while {primary} is the primary; "
                   f"stopped. {mark.message()}")
            self.say(f"{group}: fenced {member.name}, a second writable member")
            fenced.append(member.name)
        return fenced

    def _restart_router(self) -> None:
        """Start the router again if it died (it was started and not stopped): it is the endpoint."""
        from ..router.process import ensure_running

        try:
            restarted = ensure_running(self.local)
        except PgfleetError as exc:
            record(self.local, "router", "router-restart-failed", str(exc))
            return
        if restarted is not None:
            record(self.local, "router", "router-restarted", f"it had died; runs again on port {restarted.port}")
            self.say(f"router restarted on port {restarted.port}")

    def check_once(self) -> list[str]:
        """One round over every group; return the groups failed over."""
        self.local.reload_spec()
        self._restart_router()
        self._refresh_addresses()
        done = []
        for group in self.local.spec.groups:
            if under_maintenance(self.local, group):
                self._down_since.pop(group, None)
                continue
            self._fence_rogues(group)
            primary = self.local.spec.primary_of(group)
            ok = self._alive(group)
            now = time.monotonic()
            if ok:
                if group in self._down_since:
                    record(self.local, group, "recovered", f"primary {primary.name} answers again")
                self._down_since.pop(group, None)
                self._reported.pop(group, None)
                continue
            since = self._down_since.setdefault(group, now)
            if since == now:
                record(self.local, group, "primary-unreachable", f"{primary.name} does not answer")
            standbys = self.local.spec.standbys(group)
            seen = GroupSeen(group, primary.name, ok, since, tuple(
                StandbySeen(m.name, True, 0, m.sync) for m in standbys))
            decision = decide(seen, now, self.timeout)
            if decision.action == "failover":
                try:
                    new = failover(self.local, group, decision.reason)  # takes the maintenance lock
                    self.say(f"{group}: failed over to {new.name}")
                    done.append(group)
                except PgfleetError as exc:
                    record(self.local, group, "failover-failed", str(exc))
                self._down_since.pop(group, None)
            elif decision.action == "no_candidate" and self._reported.get(group) != decision.action:
                record(self.local, group, "no-failover", decision.reason)
                self._reported[group] = decision.action
        return done

    def run(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        record(self.local, "monitor", "started", f"interval {self.interval:g} s, failover after {self.timeout:g} s")
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.check_once()
            except Exception as exc:  # the monitor must keep watching whatever one round hit
                log.exception("monitor round failed")
                record(self.local, "monitor", "error", str(exc))
            stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        record(self.local, "monitor", "stopped", "")
