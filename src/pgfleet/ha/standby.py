"""Adding streaming standbys and reporting their replication state."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass

import psycopg

from ..cluster.local import LocalCluster, LocalNode
from ..errors import NodeError, PgfleetError, SpecError
from ..execute.slots import drop_slot
from ..node.fencemark import read_mark
from ..node.ports import claim_ports, release_ports
from ..node.server import LocalServer
from .events import Say, record
from .fence import fence
from .maintenance import maintenance
from .replication import connect_to, ensure_slot, sync_members, wait_streaming


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
    conn = connect_to(local.endpoint(group))
    try:
        ensure_slot(conn, name)
        server.base_backup(primary.port, local.spec.superuser, primary.password, slot=name)
        server.write_config(fast=local.spec.fast)
        server.configure_standby(primary.port, local.spec.superuser, primary.password, slot=name)
        server.start()
        local.add_member(member)
        wait_streaming(local, group, name)
        if sync:
            primary_server.set_sync_standbys(sync_members(local, group))
    except BaseException:
        with contextlib.suppress(PgfleetError):
            server.stop(mode="immediate")
        shutil.rmtree(server.home, ignore_errors=True)
        release_ports([port], local.directory)
        with contextlib.suppress(psycopg.Error):
            drop_slot(conn, name)
        if any(n.name == name for n in local.spec.nodes):
            local.remove_member(name)
            with contextlib.suppress(PgfleetError):
                primary_server.set_sync_standbys(sync_members(local, group))
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
    note: str = ""  # for a fenced member: when, why, and the command that brings it back


def replication_status(local: LocalCluster) -> list[StandbyStatus]:
    local.reload_spec()
    out: list[StandbyStatus] = []
    for group in local.spec.groups:
        standbys = local.spec.standbys(group)
        if not standbys:
            continue
        rows: dict[str, tuple[object, ...]] = {}
        with contextlib.suppress(PgfleetError, psycopg.Error), connect_to(local.endpoint(group), timeout=2) as conn:
            for r in conn.execute(
                    "SELECT application_name, state, sync_state, "
                    "pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, "
                    "extract(epoch FROM replay_lag)::float8 FROM pg_stat_replication").fetchall():
                rows[str(r[0])] = r
        for m in standbys:
            seen = rows.get(m.name)
            mark = read_mark(local.server(m.name))
            if mark is not None and seen is None:
                out.append(StandbyStatus(group, m.name, m.port, "fenced", "", None, None,
                                         f"{mark.message()} ({mark.reason})"))
            elif seen is None:
                out.append(StandbyStatus(group, m.name, m.port, "down" if not local.server(m.name).is_running()
                                         else "not streaming", "", None, None))
            else:
                out.append(StandbyStatus(group, m.name, m.port, str(seen[1]), str(seen[2]),
                                         int(str(seen[3])) if seen[3] is not None else None,
                                         float(str(seen[4])) if seen[4] is not None else 0.0))
    return out


def remove_standby(local: LocalCluster, member: str) -> None:
    """Remove a member that is not its group's primary: stop it, drop its slot, take it out of the
    synchronous standby names and cluster.json, delete its directory and release its port."""
    local.reload_spec()
    if member not in {n.name for n in local.spec.nodes}:
        raise SpecError(f"unknown member {member!r}", hint=f"members are: {', '.join(n.name for n in local.spec.nodes)}")
    node = local.node(member)
    group = node.group_name
    with maintenance(local, group, f"removal of {member}"):
        local.reload_spec()
        primary = local.spec.primary_of(group)
        if primary.name == member:
            others = [m.name for m in local.spec.standbys(group)]
            raise SpecError(f"{member} is the primary of {group} and cannot be removed",
                            hint=(f"switch over first: 'pgfleet switchover {group} --to {others[0]}'" if others
                                  else f"{group} has no standby to take over"))
        server = local.server(member)
        fence(local, member, "being removed")
        note = ""
        try:
            with connect_to(local.member_endpoint(primary.name)) as conn:
                if not drop_slot(conn, member):
                    raise NodeError(f"slot {member} is still in use", node=primary.name)
        except (PgfleetError, psycopg.Error) as exc:
            note = f"; its slot on {primary.name} could not be dropped ({str(exc).split(' — ')[0]}), drop it later"
        local.remove_member(member)
        with contextlib.suppress(PgfleetError):
            local.server(primary.name).set_sync_standbys(sync_members(local, group))
        shutil.rmtree(server.home, ignore_errors=True)
        release_ports([node.port], local.directory)
    record(local, group, "standby-removed", f"{member} (port {node.port}) removed{note}")
