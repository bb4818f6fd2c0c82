"""pgfleet backup / restore: a physical backup of the whole fleet at one consistent point, and a new local
cluster made from it."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import SpecError
from .common import bytes_progress, cluster_dir, err, human_size, open_fleet, out


@click.command("backup")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--lock-wait", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for running write transactions before the restore points.")
@click.option("--archive", is_flag=True,
              help="Keep archiving every node's WAL into DIRECTORY afterwards (pgfleet restore-point, archive-stop).")
@click.pass_context
def backup_cmd(ctx: click.Context, directory: str, lock_wait: float, archive: bool) -> None:
    """Back up every node into DIRECTORY (new or empty) with the WAL up to one consistent restore point."""
    from ..cluster.backup import backup

    with open_fleet(ctx) as fleet, bytes_progress("base backup") as bar:
        result = backup(fleet, Path(directory), progress=bar, lock_wait=lock_wait, archive=archive,
                        say=lambda msg: err.print(msg, highlight=False))
    m = result.manifest
    size = sum(n.data_bytes + n.wal_bytes for n in m.nodes)
    out.print(f"backup of {len(m.nodes)} nodes in {result.directory}: {human_size(size)} in {m.seconds:.1f} s; "
              f"restore point {m.restore_point} (commits held {m.held_ms:.1f} ms); "
              f"restore it with: pgfleet restore {result.directory} --dir NEW", highlight=False, soft_wrap=True)


@click.command("restore")
@click.argument("backup_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--target-name", help="A later restore point of an archived backup (pgfleet restore-point).")
@click.option("--target-time", help="The last restore point at or before this ISO time (UTC if no zone).")
@click.pass_context
def restore_cmd(ctx: click.Context, backup_dir: str, target_name: str | None, target_time: str | None) -> None:
    """Make a new local cluster (at --dir, new or empty) from BACKUP_DIR at its consistent point."""
    from ..cluster.restore import restore

    if target_name and target_time:
        raise SpecError("--target-name and --target-time exclude each other", hint="give one of them")
    target = cluster_dir(ctx)
    result = restore(Path(backup_dir), target, target_name=target_name, target_time=target_time,
                     say=lambda msg: err.print(msg, highlight=False))
    settled = ", ".join(f"{s.gid} on {s.node}: {s.outcome}" for s in result.settled) or "none"
    out.print(f"restored {len(result.manifest.nodes)} nodes into {target} at {result.point.name} "
              f"in {result.seconds:.1f} s; prepared transactions settled: {settled}; "
              f"connect with: pgfleet --dir {target} psql", highlight=False, soft_wrap=True)


@click.command("restore-point")
@click.argument("name")
@click.option("--lock-wait", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for running write transactions.")
@click.pass_context
def restore_point_cmd(ctx: click.Context, name: str, lock_wait: float) -> None:
    """A consistent point NAME on every node, in the running WAL archive (pgfleet backup --archive)."""
    from ..cluster.archive import add_restore_point

    with open_fleet(ctx) as fleet:
        point = add_restore_point(fleet, name, lock_wait=lock_wait)
    out.print(f"restore point {point.name} at {point.created_at} (commits held {point.held_ms:.1f} ms); "
              f"restore it with: pgfleet restore BACKUP_DIR --target-name {point.name} --dir NEW", highlight=False, soft_wrap=True)


@click.command("archive-stop")
@click.pass_context
def archive_stop_cmd(ctx: click.Context) -> None:
    """Stop the WAL archiving that 'pgfleet backup --archive' started, and drop its replication slots."""
    from ..cluster.archive import stop_archivers
    from ..cluster.local import LocalCluster

    stopped = stop_archivers(LocalCluster.load(cluster_dir(ctx)))
    out.print(f"stopped the archivers of {', '.join(a.node for a in stopped)}" if stopped
              else "no WAL archive was running", highlight=False, soft_wrap=True)


COMMANDS = (backup_cmd, restore_cmd, restore_point_cmd, archive_stop_cmd)
