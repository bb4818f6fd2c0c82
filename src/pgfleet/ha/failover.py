"""Failover (the primary is gone: fence it, promote the best standby, repoint the coordinator) and
switchover (a planned role swap that loses no commit)."""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg
from psycopg import sql

from ..cluster.databases import catalog_databases
from ..cluster.local import LocalCluster, LocalNode
from ..errors import PgfleetError, SpecError, TopologyError
from ..execute import Endpoint
from ..plan.failover import StandbySeen, best_standby
from .events import record
from .fence import fence
from .maintenance import maintenance
from .rejoin import rejoin_member
from .replication import connect_to, ensure_slot, lsn_int
from .standby import replication_status


def _replay_lsn(local: LocalCluster, member: str) -> int | None:
    try:
        with connect_to(local.member_endpoint(member), timeout=1) as conn:
            row = conn.execute("SELECT pg_last_wal_replay_lsn()").fetchone()
        return lsn_int(row[0]) if row else None
    except (PgfleetError, psycopg.Error):
        return None


def _repoint(local: LocalCluster, group: str, new: LocalNode) -> None:
    """Tell the coordinator where ``group``'s primary is now (foreign server and catalog): in its main
    database first, then in every other database that holds a pgfleet catalog (cluster/databases.py)."""
    coord_group = local.spec.coordinator.group_name
    deadline = time.monotonic() + 30
    pending: list[str] | None = None  # the other databases, once the main one is done
    while True:
        # The coordinator's primary is ``new`` when its own group failed over; else whatever the spec names
        # at each try (another command may move it meanwhile, and a stale copy would aim at a dead server).
        coord = replace(local.member_endpoint(new.name), name=coord_group) if group == coord_group \
            else local.endpoint(coord_group)
        try:
            if pending is None:
                _repoint_database(coord, group, new)
                pending = [d for d in catalog_databases(coord) if d != coord.dbname]
            while pending:
                _repoint_database(replace(coord, dbname=pending[0]), group, new)
                pending.pop(0)
            return
        except (PgfleetError, psycopg.Error) as exc:
            if time.monotonic() > deadline:
                raise TopologyError(f"could not repoint the coordinator to {new.name}: {exc}") from None
            time.sleep(0.3)


def _repoint_database(coord: Endpoint, group: str, new: LocalNode) -> None:
    with connect_to(coord, timeout=2) as conn, conn.transaction():
        conn.execute("UPDATE pgfleet.nodes SET host = %s, port = %s WHERE name = %s", ("127.0.0.1", new.port, group))
        if new.role == "worker":
            conn.execute(sql.SQL("ALTER SERVER {} OPTIONS (SET host {}, SET port {})").format(
                sql.Identifier(f"pgfleet_{group}"), sql.Literal("127.0.0.1"), sql.Literal(str(new.port))))


def _follow(local: LocalCluster, group: str, new: LocalNode, members: list[LocalNode], old: str) -> None:
    """Point the group's other standbys at the new primary and make their commits wait again."""
    with connect_to(local.member_endpoint(new.name)) as conn:
        # Slots first, the old primary's too: made before any checkpoint of the new primary, they keep
        # the WAL from its last restartpoint (before the divergence) that a rewound old primary and the
        # other standbys stream from; without it the rejoin could find that WAL recycled.
        for name in [m.name for m in members] + [old]:
            ensure_slot(conn, name)
        # A checkpoint on the new timeline at once: should this primary die in turn, pg_rewind finds a
        # checkpoint before the divergence in WAL that is still there (clusters with rare checkpoints
        # had already recycled the segment it needed).
        conn.execute("CHECKPOINT")
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
        best = best_standby(seen)
        if best is None:
            raise TopologyError(f"no standby of {group} is reachable", hint="start one (pgfleet up) and retry")
        candidate = best.member
    new = local.node(candidate)
    record(local, group, "failover-start", f"{reason}; promoting {new.name}")
    mark = fence(local, old.name, f"failover of {group} to {new.name}")
    record(local, group, "fenced", f"old primary {old.name} stopped; {mark.message()}")
    steps: list[str] = []

    def step(name: str, since: float) -> float:
        now = time.monotonic()
        steps.append(f"{name} {now - since:.2f} s")
        return now

    mark_time = step("fence", started)
    local.server(new.name).promote()
    local.set_primary(group, new.name)
    mark_time = step("promote", mark_time)
    others = [m for m in standbys if m.name != new.name]
    _follow(local, group, new, others, old.name)
    mark_time = step("standbys", mark_time)
    _repoint(local, group, new)
    step("repoint", mark_time)
    record(local, group, "failover-done",
           f"{new.name} (port {new.port}) is primary; took {time.monotonic() - started:.2f} s ({', '.join(steps)}); "
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
    _follow(local, group, new, others, old.name)
    _repoint(local, group, new)
    pause = time.monotonic() - started
    rejoin_member(local, old.name)
    record(local, group, "switchover-done", f"{new.name} is primary, {old.name} follows it; writes paused {pause:.2f} s")
    return new
