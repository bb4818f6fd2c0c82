"""`dump` / `export` / `import` with --all-databases: one output per coordinator database that holds
distributed tables, in a directory, one file per database named after it (``<database>.dump`` for a
dump, ``<database>.json`` for a topology).

The directory appears whole or not at all: the files are written into a temporary directory next to it,
which becomes the directory when every database is done (it must be new or empty). An import checks the
files of every database against the workers before it applies any."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from ..errors import ClusterError, PgfleetError, SpecError
from .databases import attach_database, database_exists
from .fleet import Fleet
from .logical_dump import DumpResult, Progress, dump
from .topofile import apply_import, check_import, export_topology, load_topology_file

DUMP_SUFFIX = ".dump"
TOPOLOGY_SUFFIX = ".json"


def file_name(database: str, suffix: str) -> str:
    """The file of ``database`` in the directory: its name, with what a file name cannot hold (/, %, a
    leading dot) percent-encoded."""
    name = quote(database, safe=" !#$&'()+,;=@[]^`{}~-_")
    return ("%2E" + name[1:] if name.startswith(".") else name) + suffix


def database_of(path: Path, suffix: str) -> str:
    return unquote(path.name[: -len(suffix)])


@contextmanager
def staged(directory: Path) -> Iterator[Path]:
    """A temporary directory next to ``directory`` (new or empty) that becomes it when the block succeeds,
    and is deleted when it fails."""
    directory = directory.absolute()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SpecError(f"{directory} exists and is not an empty directory",
                        hint="give a new or empty directory: each database gets its own file in it")
    if not directory.parent.is_dir():
        raise SpecError(f"{directory.parent} does not exist", hint="create it first, or give another directory")
    work = directory.with_name(f".{directory.name}.partial-{secrets.token_hex(4)}")
    work.mkdir()
    try:
        yield work
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        work.rename(directory)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``path`` holds the whole JSON text or is left as it was (a temporary name renamed)."""
    partial = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")
    try:
        partial.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _naming(database: str, what: str, outcome: str = "nothing was written") -> Iterator[None]:
    """An error while doing ``what`` for one database of several says which database, and ``outcome``."""
    try:
        yield
    except PgfleetError as exc:
        raise type(exc)(f"{what} of database {database} failed: {exc.message}; {outcome}",
                        hint=exc.hint, node=exc.node) from None


def dump_all(fleets: Sequence[Fleet], directory: Path,
             progress: Callable[[str], Progress] | None = None) -> list[tuple[str, DumpResult]]:
    """pgfleet dump of every database of ``fleets`` into ``directory``, one archive each: (database,
    result) each, the paths those in ``directory``."""
    results: list[tuple[str, DumpResult]] = []
    with staged(directory) as work:
        for fleet in fleets:
            db = fleet.coordinator.dbname
            with _naming(db, "the dump"):
                results.append((db, dump(fleet, work / file_name(db, DUMP_SUFFIX), progress(db) if progress else None)))
    return [(db, replace(r, path=directory.absolute() / r.path.name)) for db, r in results]


def export_all(fleets: Sequence[Fleet], directory: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """pgfleet export of every database of ``fleets`` into ``directory``, one topology file each: (database,
    file, topology) each."""
    done = []
    with staged(directory) as work:
        for fleet in fleets:
            db = fleet.coordinator.dbname
            with _naming(db, "the export"):
                data = export_topology(fleet)
            write_json(work / file_name(db, TOPOLOGY_SUFFIX), data)
            done.append((db, directory.absolute() / file_name(db, TOPOLOGY_SUFFIX), data))
    return done


def read_topologies(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """The topology files of ``directory`` (written by export --all-databases): (database, data) each, the
    database the file says (else its name's)."""
    if not directory.is_dir():
        raise ClusterError(f"{directory} is not a directory",
                           hint="give the directory 'pgfleet export --all-databases' wrote")
    files = sorted(p for p in directory.iterdir() if p.name.endswith(TOPOLOGY_SUFFIX) and not p.name.startswith("."))
    if not files:
        raise ClusterError(f"{directory} holds no topology file (*{TOPOLOGY_SUFFIX})",
                           hint="give the directory 'pgfleet export --all-databases' wrote")
    found = []
    for path in files:
        data = load_topology_file(path)
        found.append((str(data.get("database") or database_of(path, TOPOLOGY_SUFFIX)), data))
    return found


def import_all(main: Fleet, topologies: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    """Import each database's topology into the database of that name on ``main``'s coordinator: every
    database must exist, and every file is checked against the workers, before anything is applied."""
    absent = [db for db, _ in topologies if not database_exists(main.conn(), db)]
    if absent:
        which = f"database {absent[0]} does" if len(absent) == 1 else f"databases {', '.join(absent)} do"
        raise SpecError(f"{which} not exist on the coordinator; nothing was imported",
                        hint="create " + ", ".join(f"pgfleet psql -c 'CREATE DATABASE {db}'" for db in absent)
                             + ", then import again")
    fleets = [attach_database(main, db) for db, _ in topologies]
    try:
        plans = []
        for fleet, (db, data) in zip(fleets, topologies, strict=True):
            with _naming(db, "the import", "no database was imported"):
                plans.append(check_import(fleet, data))
        return [(fleet.coordinator.dbname, apply_import(fleet, plan)) for fleet, plan in zip(fleets, plans, strict=True)]
    finally:
        for fleet in fleets:
            if fleet is not main:
                fleet.close()


