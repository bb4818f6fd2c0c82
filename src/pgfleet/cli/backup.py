"""pgfleet backup / restore: a physical backup of the whole fleet at one consistent point, and a new local
cluster made from it."""

from __future__ import annotations

from pathlib import Path

import click

from .common import bytes_progress, cluster_dir, err, human_size, open_fleet, out


@click.command("backup")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--lock-wait", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Seconds to wait for running write transactions before the restore points.")
@click.pass_context
def backup_cmd(ctx: click.Context, directory: str, lock_wait: float) -> None:
    """Back up every node into DIRECTORY (new or empty) with the WAL up to one consistent restore point."""
    from ..cluster.backup import backup

    with open_fleet(ctx) as fleet, bytes_progress("base backup") as bar:
        result = backup(fleet, Path(directory), progress=bar, lock_wait=lock_wait,
                        say=lambda msg: err.print(msg, highlight=False))
    m = result.manifest
    size = sum(n.data_bytes + n.wal_bytes for n in m.nodes)
    out.print(f"backup of {len(m.nodes)} nodes in {result.directory}: {human_size(size)} in {m.seconds:.1f} s; "
              f"restore point {m.restore_point} (commits held {m.held_ms:.1f} ms); "
              f"restore it with: pgfleet restore {result.directory} --dir NEW", highlight=False)


@click.command("restore")
@click.argument("backup_dir", type=click.Path(file_okay=False, exists=True))
@click.pass_context
def restore_cmd(ctx: click.Context, backup_dir: str) -> None:
    """Make a new local cluster (at --dir, new or empty) from BACKUP_DIR at its consistent point."""
    from ..cluster.restore import restore

    target = cluster_dir(ctx)
    result = restore(Path(backup_dir), target, say=lambda msg: err.print(msg, highlight=False))
    settled = ", ".join(f"{s.gid} on {s.node}: {s.outcome}" for s in result.settled) or "none"
    out.print(f"restored {len(result.manifest.nodes)} nodes into {target} at {result.manifest.restore_point} "
              f"in {result.seconds:.1f} s; prepared transactions settled: {settled}; "
              f"connect with: pgfleet --dir {target} psql", highlight=False)


COMMANDS = (backup_cmd, restore_cmd)
