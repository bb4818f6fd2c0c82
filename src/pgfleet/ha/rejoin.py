"""Rejoin: an old primary (or any stopped member) comes back as a standby of its group's primary."""

from __future__ import annotations

from ..cluster.local import LocalCluster
from ..errors import NodeError, SpecError
from .events import record
from .maintenance import maintenance
from .replication import connect_to, ensure_slot, sync_members, wait_streaming


def rejoin(local: LocalCluster, member: str) -> None:
    """Bring an old primary (or any stopped member) back as a standby of its group's primary."""
    local.reload_spec()
    with maintenance(local, local.node(member).group_name, f"rejoin of {member}"):
        rejoin_member(local, member)


def rejoin_member(local: LocalCluster, member: str) -> None:
    local.reload_spec()
    node = local.node(member)
    group = node.group_name
    primary = local.spec.primary_of(group)
    if primary.name == member:
        raise SpecError(f"{member} is the primary of {group}", hint="only a member that is not primary can rejoin")
    server = local.server(member)
    if server.is_running():  # an old primary still up, or a standby that needs pg_rewind too
        server.stop(mode="fast")
    with connect_to(local.member_endpoint(primary.name)) as conn:
        ensure_slot(conn, member)
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
    wait_streaming(local, group, member)
    local.server(primary.name).set_sync_standbys(sync_members(local, group))
    record(local, group, "rejoined", f"{member} follows {primary.name}")
