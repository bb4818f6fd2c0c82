"""Rejoin: an old primary (or any stopped member) comes back as a standby of its group's primary.

First pg_rewind (fast: copies only what changed since the divergence); when that cannot work (the WAL it
needs is gone, the data directory is damaged or missing) or the rewound standby does not start
streaming, a fresh base backup, the old data directory kept aside until the new one streams. The member
stays fenced (node/fencemark.py) for the whole operation: on any failure it ends stopped and fenced,
never running half-joined.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable

from ..cluster.local import LocalCluster, LocalNode
from ..errors import NodeError, PgfleetError, SpecError
from ..node.fencemark import clear_mark, mark_fenced, read_mark
from ..node.server import LocalServer
from .events import Say, record
from .maintenance import maintenance
from .replication import connect_to, ensure_slot, sync_members, wait_streaming

Progress = Callable[[int, int], None]  # (done kB, total kB) of a base backup
STREAMING_TIMEOUT = 20.0  # seconds a rewound standby gets to start streaming before the base backup


def rejoin(local: LocalCluster, member: str, *, say: Say | None = None, progress: Progress | None = None) -> str:
    """Bring ``member`` back as a standby of its group's primary; return how ("pg_rewind" or "base backup")."""
    local.reload_spec()
    with maintenance(local, local.node(member).group_name, f"rejoin of {member}"):
        return rejoin_member(local, member, say=say, progress=progress)


def rejoin_member(local: LocalCluster, member: str, *, say: Say | None = None, progress: Progress | None = None) -> str:
    say = say or (lambda _m: None)
    local.reload_spec()
    node = local.node(member)
    group = node.group_name
    primary = local.spec.primary_of(group)
    if primary.name == member:
        raise SpecError(f"{member} is the primary of {group}", hint="only a member that is not primary can rejoin")
    server = local.server(member)
    if read_mark(server) is None:
        mark_fenced(server, f"rejoin onto {primary.name} in progress")
    _stop(server)
    with connect_to(local.member_endpoint(primary.name)) as conn:
        ensure_slot(conn, member)
    how = "pg_rewind"
    try:
        if not server.exists():
            raise NodeError("its data directory is missing", node=member)
        say(f"{member}: pg_rewind onto {primary.name}")
        _rewind_and_follow(local, server, primary)
    except PgfleetError as exc:
        record(local, group, "rejoin-rewind-failed", f"{member}: {exc}; taking a fresh base backup")
        _stop(server)
        how = "base backup"
        say(f"{member}: pg_rewind did not work ({_short(exc)}); fresh base backup from {primary.name}")
        try:
            _reclone_and_follow(local, server, primary, progress)
        except PgfleetError as final:
            _stop(server)
            mark_fenced(server, f"rejoin onto {primary.name} failed: {_short(final)}")
            record(local, group, "rejoin-failed", f"{member}: {final}; it stays stopped and fenced")
            raise NodeError(f"{member} could not rejoin {group}: pg_rewind and a fresh base backup both failed "
                            f"(last: {_short(final)})", node=member,
                            hint=f"it stays stopped and fenced; see {server.logfile} and 'pgfleet events', "
                                 f"or remove it with 'pgfleet standby remove {member}'") from None
    clear_mark(server)
    local.server(primary.name).set_sync_standbys(sync_members(local, group))
    record(local, group, "rejoined", f"{member} follows {primary.name} (by {how})")
    return how


def _rewind_and_follow(local: LocalCluster, server: LocalServer, primary: LocalNode) -> None:
    # pg_rewind first recovers an uncleanly stopped target in single-user mode, which refuses
    # standby.signal; the fence marker keeps 'pgfleet up' away meanwhile.
    (server.datadir / "standby.signal").unlink(missing_ok=True)
    server.rewind(primary.port, local.spec.superuser, primary.password)
    _follow_primary(local, server, primary, STREAMING_TIMEOUT)


def _reclone_and_follow(local: LocalCluster, server: LocalServer, primary: LocalNode, progress: Progress | None) -> None:
    aside = server.home / "data.before-rejoin"
    shutil.rmtree(aside, ignore_errors=True)  # left by an interrupted earlier attempt
    if server.exists():
        os.rename(server.datadir, aside)
    else:
        shutil.rmtree(server.datadir, ignore_errors=True)
    try:
        server.base_backup(primary.port, local.spec.superuser, primary.password, slot=server.name, progress=progress)
        _follow_primary(local, server, primary, 60.0)
    except BaseException:
        _stop(server)
        shutil.rmtree(server.datadir, ignore_errors=True)
        if aside.exists():
            os.rename(aside, server.datadir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _follow_primary(local: LocalCluster, server: LocalServer, primary: LocalNode, timeout: float) -> None:
    server.write_config(fast=local.spec.fast)  # pg_rewind and pg_basebackup copied the primary's files
    (server.datadir / "pgfleet.sync.conf").unlink(missing_ok=True)
    server.configure_standby(primary.port, local.spec.superuser, primary.password, slot=server.name)
    server.start()
    wait_streaming(local, primary.group_name, server.name, timeout=timeout)


def _stop(server: LocalServer) -> None:
    try:
        server.stop(mode="fast", timeout=30)
    except PgfleetError:
        with contextlib.suppress(PgfleetError):
            server.stop(mode="immediate", timeout=10)
    if server.is_running():
        server.kill()


def _short(exc: PgfleetError) -> str:
    """The first clause of an error, without the program's own log lines."""
    text = exc.message
    if " failed (exit " in text:
        program = text.split(" failed (exit ", 1)[0]
        errors = [part.split("error: ", 1)[1] for part in text.split(" / ") if "error: " in part]
        text = f"{program}: {errors[-1]}" if errors else text.split(": ", 1)[0]
        if "FATAL:" in text:  # libpq's "connection to server at … failed: FATAL:  <reason>"
            text = f"{program}: {text.split('FATAL:', 1)[1].strip()}"
    return text.split(" / ")[0][:200]
