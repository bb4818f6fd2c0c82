"""Standbys, failover, switchover, rejoin and the monitor, for the local cluster.

Each node (coord, w1, …) is a group of members: one primary and its streaming standbys (made with
pg_basebackup and a replication slot, synchronous by default so that an acknowledged commit is on two
servers). The monitor checks every primary about once a second. When one has not answered for
``timeout`` seconds it fences it (stops the local process), promotes the standby that replayed the
most WAL, and for a worker repoints the coordinator's foreign server. Every decision is written to
``events.jsonl`` in the cluster directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from ..errors import NodeError, PgfleetError, SpecError, TopologyError
from ..execute.connect import Conn, Endpoint, connect
from ..node.ports import claim_ports, release_ports
from ..node.server import LocalServer
from ..plan.failover import GroupSeen, StandbySeen, decide
from .local import LocalCluster, LocalNode

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
Say = Callable[[str], None]


# --- events ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    time: str
    node: str
    kind: str
    detail: str


def record(local: LocalCluster, node: str, kind: str, detail: str) -> Event:
    event = Event(datetime.now(UTC).isoformat(timespec="milliseconds"), node, kind, detail)
    path = local.directory / EVENTS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(json.dumps(asdict(event)) + "\n")
    log.info("%s %s: %s", node, kind, detail)
    return event


def read_events(local: LocalCluster) -> list[Event]:
    path = local.directory / EVENTS
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, TypeError):
            events.append(Event(**json.loads(line)))
    return events


# --- maintenance locks ---------------------------------------------------------------------------------
MAINTENANCE_STALE = 300.0  # seconds after which a lock left by a dead process is ignored


@contextlib.contextmanager
def maintenance(local: LocalCluster, group: str, what: str) -> Iterator[None]:
    """Keep the monitor (and other pgfleet commands) away from ``group`` while its roles change."""
    path = local.directory / f"maintenance-{group}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if time.time() - path.stat().st_mtime < MAINTENANCE_STALE:
            raise TopologyError(f"node {group} is busy ({path.read_text().strip() or 'another operation'})",
                                hint="wait for it to finish and try again") from None
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{what} (pid {os.getpid()})\n")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def under_maintenance(local: LocalCluster, group: str) -> bool:
    path = local.directory / f"maintenance-{group}"
    try:
        return time.time() - path.stat().st_mtime < MAINTENANCE_STALE
    except FileNotFoundError:
        return False


# --- helpers -----------------------------------------------------------------------------------------
def _connect(ep: Endpoint, timeout: int = 2) -> Conn:
    return connect(ep, timeout=timeout)


def _lsn(text: object) -> int | None:
    if text is None:
        return None
    hi, lo = str(text).split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def _sync_members(local: LocalCluster, group: str) -> list[str]:
    return [m.name for m in local.spec.standbys(group) if m.sync]


def _wait_streaming(local: LocalCluster, group: str, member: str, timeout: float = 60) -> None:
    primary = local.endpoint(group)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with _connect(primary) as conn:
                row = conn.execute("SELECT state FROM pg_stat_replication WHERE application_name = %s",
                                   (member,)).fetchone()
            if row and row[0] == "streaming":
                return
            last = str(row[0]) if row else "not connected"
        except PgfleetError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise NodeError(f"standby {member} is not streaming from {group} after {timeout:.0f} s ({last})", node=member,
                    hint=f"see {local.server(member).logfile}")


def _ensure_slot(conn: Conn, slot: str) -> None:
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true) "
                 "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)", (slot, slot))


# --- standbys ----------------------------------------------------------------------------------------
def add_standby(local: LocalCluster, group: str, *, sync: bool = True, say: Say | None = None) -> LocalNode:
    """Create a streaming standby of ``group``'s primary; on failure nothing of it remains."""
    if group not in local.spec.groups:
        raise SpecError(f"unknown node {group!r}", hint=f"nodes are: {', '.join(local.spec.groups)}")
    primary = local.spec.primary_of(group)
    used = {n.name for n in local.spec.nodes}
    index = 1
    while f"{group}_s{index}" in used:
        index += 1
    name = f"{group}_s{index}"
    port = claim_ports(1, local.directory, start=max(n.port for n in local.spec.nodes) + 1)[0]
    member = LocalNode(name=name, role=primary.role, port=port, password=primary.password, group=group, sync=sync)
    server = LocalServer(name=name, home=local.directory / "nodes" / name, port=port, binaries=local.binaries,
                         run_as=local.run_as)
    primary_server = local.server(primary.name)
    if say:
        say(f"standby {name} of {group}: base backup from port {primary.port}")
    conn = _connect(local.endpoint(group))
    try:
        _ensure_slot(conn, name)
        server.base_backup(primary.port, local.spec.superuser, primary.password, slot=name)
        server.write_config(fast=local.spec.fast)
        server.configure_standby(primary.port, local.spec.superuser, primary.password, slot=name)
        server.start()
        local.add_member(member)
        _wait_streaming(local, group, name)
        if sync:
            primary_server.set_sync_standbys(_sync_members(local, group))
    except BaseException:
        with contextlib.suppress(PgfleetError):
            server.stop(mode="immediate")
        shutil.rmtree(server.home, ignore_errors=True)
        release_ports([port], local.directory)
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_drop_replication_slot(%s) FROM pg_replication_slots WHERE slot_name = %s",
                         (name, name))
        if any(n.name == name for n in local.spec.nodes):
            from dataclasses import replace

            local.spec = replace(local.spec, nodes=tuple(n for n in local.spec.nodes if n.name != name))
            local._write_files()
            with contextlib.suppress(PgfleetError):
                primary_server.set_sync_standbys(_sync_members(local, group))
        raise
    finally:
        conn.close()
    record(local, group, "standby-added", f"{name} on port {port}, {'synchronous' if sync else 'asynchronous'}")
    return member


@dataclass(frozen=True)
class StandbyStatus:
    node: str
    member: str
    port: int
    state: str  # streaming | catchup | … | down
    sync_state: str  # sync | quorum | potential | async | ""
    lag_bytes: int | None
    lag_seconds: float | None


def replication_status(local: LocalCluster) -> list[StandbyStatus]:
    local.reload_spec()
    out: list[StandbyStatus] = []
    for group in local.spec.groups:
        standbys = local.spec.standbys(group)
        if not standbys:
            continue
        rows: dict[str, tuple[object, ...]] = {}
        with contextlib.suppress(PgfleetError, psycopg.Error), _connect(local.endpoint(group), timeout=2) as conn:
            for r in conn.execute(
                    "SELECT application_name, state, sync_state, "
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                    "extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication").fetchall():
                rows[str(r[0])] = r
        for m in standbys:
            seen = rows.get(m.name)
            if seen is None:
                out.append(StandbyStatus(group, m.name, m.port, "down" if not local.server(m.name).is_running()
                                         else "not streaming", "", None, None))
            else:
                out.append(StandbyStatus(group, m.name, m.port, str(seen[1]), str(seen[2]),
                                         int(str(seen[3])) if seen[3] is not None else None,
                                         float(str(seen[4])) if seen[4] is not None else 0.0))
    return out


# --- failover ----------------------------------------------------------------------------------------
def _fence(local: LocalCluster, member: str) -> None:
    """Make sure ``member`` accepts no more writes: stop it (it is a local process), kill it if needed."""
    server = local.server(member)
    try:
        server.stop(mode="immediate", timeout=10)
    except PgfleetError:
        server.kill()
    if server.is_running():
        server.kill()


def _replay_lsn(local: LocalCluster, member: str) -> int | None:
    try:
        with _connect(local.member_endpoint(member), timeout=1) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn()").fetchone()
        return _lsn(row[0]) if row else None
    except (PgfleetError, psycopg.Error):
        return None


def _repoint(local: LocalCluster, group: str, new: LocalNode) -> None:
    """Tell the coordinator where ``group``'s primary is now (foreign server and catalog)."""
    coord = local.endpoint(local.spec.coordinator.group_name)
    deadline = time.monotonic() + 30
    while True:
        try:
            with _connect(coord, timeout=2) as conn, conn.transaction():
                conn.execute("UPDATE pgfleet.nodes SET host = %s, port = %s WHERE name = %s",
                             ("127.0.0.1", new.port, group))
                if new.role == "worker":
                    conn.execute(sql.SQL("ALTER SERVER {} OPTIONS (SET host {}, SET port {})").format(
                        sql.Identifier(f"pgfleet_{group}"), sql.Literal("127.0.0.1"), sql.Literal(str(new.port))))
            return
        except (PgfleetError, psycopg.Error) as exc:
            if time.monotonic() > deadline:
                raise TopologyError(f"could not repoint the coordinator to {new.name}: {exc}") from None
            time.sleep(0.3)


def _follow(local: LocalCluster, group: str, new: LocalNode, members: list[LocalNode]) -> None:
    """Point the group's other standbys at the new primary and make their commits wait again."""
    with _connect(local.member_endpoint(new.name)) as conn:
        # A checkpoint on the new timeline at once: should this primary die in turn, pg_rewind finds a
        # checkpoint before the divergence in WAL that is still there (clusters with rare checkpoints
        # had already recycled the segment it needed).
        conn.execute("CHECKPOINT")
        for m in members:
            _ensure_slot(conn, m.name)
    for m in members:
        server = local.server(m.name)
        server.configure_standby(new.port, local.spec.superuser, new.password, slot=m.name)
        if server.is_running():
            server.reload()
    local.server(new.name).set_sync_standbys([m.name for m in members if m.sync])


def failover(local: LocalCluster, group: str, reason: str, candidate: str | None = None) -> LocalNode:
    """Fence the primary of ``group``, promote the best standby, repoint the coordinator."""
    with maintenance(local, group, "failover"):
        return _failover(local, group, reason, candidate)


def _failover(local: LocalCluster, group: str, reason: str, candidate: str | None) -> LocalNode:
    started = time.monotonic()
    local.reload_spec()
    old = local.spec.primary_of(group)
    standbys = local.spec.standbys(group)
    if not standbys:
        raise TopologyError(f"node {group} has no standby to fail over to",
                            hint=f"add one with 'pgfleet standby add {group}'")
    if candidate is None:
        lsns = {m.name: _replay_lsn(local, m.name) for m in standbys}
        seen = tuple(StandbySeen(m.name, lsns[m.name] is not None, lsns[m.name], m.sync) for m in standbys)
        from ..plan.failover import best_standby

        best = best_standby(seen)
        if best is None:
            raise TopologyError(f"no standby of {group} is reachable", hint="start one (pgfleet up) and retry")
        candidate = best.member
    new = local.node(candidate)
    record(local, group, "failover-start", f"{reason}; promoting {new.name}")
    _fence(local, old.name)
    record(local, group, "fenced", f"old primary {old.name} stopped")
    local.server(new.name).promote()
    local.set_primary(group, new.name)
    others = [m for m in standbys if m.name != new.name]
    _follow(local, group, new, others)
    _repoint(local, group, new)
    record(local, group, "failover-done",
           f"{new.name} (port {new.port}) is primary; took {time.monotonic() - started:.2f} s; "
           f"old primary {old.name} is fenced, rejoin it with 'pgfleet node rejoin {old.name}'")
    return new


def switchover(local: LocalCluster, group: str, to: str | None = None, *, max_lag_bytes: int = 16 << 20) -> LocalNode:
    """Planned role swap: the primary stops cleanly (its standby receives everything), the standby
    takes over, the old primary follows it. No acknowledged commit is lost."""
    with maintenance(local, group, "switchover"):
        return _switchover(local, group, to, max_lag_bytes)


def _switchover(local: LocalCluster, group: str, to: str | None, max_lag_bytes: int) -> LocalNode:
    local.reload_spec()
    old = local.spec.primary_of(group)
    status = {s.member: s for s in replication_status(local) if s.node == group}
    if to is not None:
        if to not in status:
            raise SpecError(f"{to} is not a standby of {group}",
                            hint=f"standbys of {group}: {', '.join(status) or 'none'}")
        target = status[to]
    else:
        streaming = [s for s in status.values() if s.state == "streaming"]
        if not streaming:
            raise TopologyError(f"node {group} has no streaming standby to switch over to")
        target = min(streaming, key=lambda s: (s.lag_bytes or 0, s.sync_state not in ("sync", "quorum")))
    if target.state != "streaming":
        raise TopologyError(f"standby {target.member} is {target.state}, not streaming", hint="nothing was changed")
    if (target.lag_bytes or 0) > max_lag_bytes:
        raise TopologyError(f"standby {target.member} is {target.lag_bytes} bytes behind {old.name}",
                            hint="wait until it catches up (pgfleet status), nothing was changed")
    started = time.monotonic()
    record(local, group, "switchover-start", f"{old.name} → {target.member}")
    primary = local.server(old.name)
    primary.stop(mode="fast")  # a clean shutdown sends all WAL to the connected standbys first
    new = local.node(target.member)
    local.server(new.name).promote()
    local.set_primary(group, new.name)
    others = [m for m in local.spec.members(group) if m.name not in (new.name, old.name)]
    _follow(local, group, new, others)
    _repoint(local, group, new)
    pause = time.monotonic() - started
    _rejoin(local, old.name)
    record(local, group, "switchover-done", f"{new.name} is primary, {old.name} follows it; writes paused {pause:.2f} s")
    return new


def rejoin(local: LocalCluster, member: str) -> None:
    """Bring an old primary (or any stopped member) back as a standby of its group's primary."""
    local.reload_spec()
    with maintenance(local, local.node(member).group_name, f"rejoin of {member}"):
        _rejoin(local, member)


def _rejoin(local: LocalCluster, member: str) -> None:
    local.reload_spec()
    node = local.node(member)
    group = node.group_name
    primary = local.spec.primary_of(group)
    if primary.name == member:
        raise SpecError(f"{member} is the primary of {group}", hint="only a member that is not primary can rejoin")
    server = local.server(member)
    if server.is_running():  # an old primary still up, or a standby that needs pg_rewind too
        server.stop(mode="fast")
    with _connect(local.member_endpoint(primary.name)) as conn:
        _ensure_slot(conn, member)
    try:
        server.rewind(primary.port, local.spec.superuser, primary.password)
    except NodeError as exc:
        record(local, group, "rejoin-failed", f"{member}: {exc}")
        raise NodeError(f"{member} could not be rewound onto {primary.name}: {exc.message}", node=member,
                        hint="its data directory is unchanged; remove the member and add a fresh standby") from None
    server.write_config(fast=local.spec.fast)  # pg_rewind copied the primary's configuration files
    (server.datadir / "pgfleet.sync.conf").unlink(missing_ok=True)
    server.configure_standby(primary.port, local.spec.superuser, primary.password, slot=member)
    server.start()
    _wait_streaming(local, group, member)
    local.server(primary.name).set_sync_standbys(_sync_members(local, group))
    record(local, group, "rejoined", f"{member} follows {primary.name}")


# --- the monitor -------------------------------------------------------------------------------------
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
        with contextlib.suppress(PgfleetError, psycopg.Error), _connect(self.local.endpoint(coord.group_name), 1) as c:
            self._addresses = {str(r[0]): (str(r[1]), int(str(r[2])))
                               for r in c.execute("SELECT name, host, port FROM pgfleet.nodes WHERE role = 'worker'")}

    def _alive(self, group: str) -> bool:
        primary = self.local.spec.primary_of(group)
        host, port = self._address(group)
        ep = Endpoint(group, host, port, self.local.spec.dbname, self.local.spec.superuser, primary.password)
        try:
            with _connect(ep, timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except (PgfleetError, psycopg.Error):
            return False

    def check_once(self) -> list[str]:
        """One round over every group; return the groups failed over."""
        self.local.reload_spec()
        self._refresh_addresses()
        done = []
        for group in self.local.spec.groups:
            if under_maintenance(self.local, group):
                self._down_since.pop(group, None)
                continue
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
