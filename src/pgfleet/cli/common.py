"""What every command family shares: consoles, the one-line error, the cluster directory, progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import psycopg
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)

from ..cluster.fleet import Fleet
from ..cluster.local import default_dir
from ..errors import PgfleetError, SpecError

# Piped output (scripts, CI logs) gets wide lines instead of truncated table columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


DIR_HELP = ("Cluster directory (default: ~/.pgfleet/default; as root /var/lib/pgfleet/USER/default, USER being "
            "$SUDO_USER or root). Accepted before or after the command.")


def _remember_dir(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:  # after the command: overrides --dir before it and PGFLEET_DIR
        ctx.find_root().ensure_object(dict)["dir"] = value


DATABASE_HELP = ("Database of the coordinator (default: the cluster's, postgres); made ready for distributed "
                 "tables on first use. Accepted before or after the command.")


def _remember_database(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().ensure_object(dict)["database"] = value


FC = TypeVar("FC", bound=Callable[..., Any] | click.Command)


def database_option(help_text: str) -> Callable[[FC], FC]:
    """--database after a command that reads a database, with its own help (accept_dir then adds none)."""
    return click.option("--database", "after_database", expose_value=False, callback=_remember_database,
                        help=help_text + " Accepted before or after the command.")


def accept_dir(command: click.Command) -> None:
    """Give ``command`` (and, for a group, every command in it) its own --dir and --database, same meaning
    as the root's."""
    if not any(isinstance(p, click.Option) and "--dir" in p.opts for p in command.params):
        command.params.append(click.Option(["--dir", "after_dir"], type=click.Path(file_okay=False),
                                           expose_value=False, callback=_remember_dir, help=DIR_HELP))
    if not any(isinstance(p, click.Option) and "--database" in p.opts for p in command.params):
        command.params.append(click.Option(["--database", "after_database"], expose_value=False,
                                           callback=_remember_database, help=DATABASE_HELP))
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            accept_dir(sub)


class FleetGroup(click.Group):
    """Turns every pgfleet error into one line and a non-zero exit, never a traceback; every command added
    accepts --dir after its name too."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        accept_dir(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgfleetError as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(f"database error: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__}")
        except KeyboardInterrupt:
            fail("interrupted", 130)


def database_name(ctx: click.Context) -> str | None:
    """The coordinator database given with --database (None: the cluster's main database)."""
    root = ctx.find_root()
    return str(root.obj["database"]) if root.obj and root.obj.get("database") else None


def cluster_dir(ctx: click.Context) -> Path:
    return Path(ctx.obj["dir"]) if ctx.obj.get("dir") else default_dir()


@contextmanager
def open_fleet(ctx: click.Context, *, prepare: bool = True) -> Iterator[Fleet]:
    """The cluster on the database of --database (made ready for distributed tables on first use; with
    ``prepare`` False, for a command that only reads, it must hold them already)."""
    fleet = Fleet.open(cluster_dir(ctx), database_name(ctx), prepare=prepare)
    try:
        yield fleet
    finally:
        fleet.close()


@contextmanager
def open_fleets(ctx: click.Context, all_databases: bool) -> Iterator[list[Fleet]]:
    """The cluster on every coordinator database that holds distributed tables (``all_databases``), else
    on the one of --database (default: the cluster's main database), which must hold them already."""
    if all_databases and database_name(ctx) is not None:
        raise SpecError("--database and --all-databases exclude each other", hint="give one of them")
    from ..cluster.databases import catalog_fleets

    with open_fleet(ctx, prepare=False) as fleet:
        fleets = catalog_fleets(fleet) if all_databases else [fleet]
        try:
            yield fleets
        finally:
            for other in fleets[1:]:
                other.close()


@contextmanager
def _bars(describe: Callable[[str], str], *columns: ProgressColumn) -> Iterator[Callable[[str, int, int], None]]:
    """A bar per key, made on its first update: ``update(key, done, total)``."""
    with Progress(TextColumn("{task.description}"), BarColumn(), *columns, console=err, transient=False,
                  disable=not err.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def update(key: str, done: int, total: int) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(describe(key), total=max(total, 1))
            bar.update(tasks[key], completed=done, total=max(total, 1))

        yield update


def progress_bar(label: str) -> AbstractContextManager[Callable[[str, int, int], None]]:
    """A bar per phase of an operation (rows, shards): done of total, time elapsed."""
    names = {"shards": "creating shards", "copy": "moving rows", "verify": "verifying", "swap": "switching over"}
    return _bars(lambda phase: f"{label}: {names.get(phase, phase)}", MofNCompleteColumn(), TimeElapsedColumn())


def bytes_progress(label: str) -> AbstractContextManager[Callable[[str, int, int], None]]:
    """A bar per item (a node) with bytes done, speed and the time left: ``update(item, done, total)``."""
    return _bars(lambda item: f"{label} {item}", DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


def human_size(n: int) -> str:
    """Bytes as B / kB / MB / GB / TB, for tables."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)
