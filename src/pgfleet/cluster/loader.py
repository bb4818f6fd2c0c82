"""Loading COPY data (a file in text or CSV format) straight into the shards, in parallel.

The coordinator can load the same data (``COPY t FROM STDIN``), but postgres_fdw then inserts it in
batches of ``batch_size`` rows over one connection per worker, several times slower than a plain
server. Here the client reads only the key field of every record (copytext.py, numpy over whole
buffers), hands each shard its records unchanged over its own COPY, and the workers parse and insert in
parallel. All or nothing: every shard's COPY is one transaction on its worker, prepared (two-phase)
and committed only when every shard has its rows.

What cannot be routed in the client (a key type without client-side hashing, list tables, reference
tables, a NULL key, escapes that change record or field boundaries …) goes through the coordinator
instead, whole, so PostgreSQL applies its own rules and errors; the result says which path was taken.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO

import psycopg
from psycopg import sql

from .. import copytext
from ..copytext import CannotSplit, CopyFormat
from ..copyroute import RecordCutter, ShardTargets, drop_header
from ..errors import SpecError
from ..plan.tables import ident
from ..router.twophase import GID_PREFIX
from ..spec import QualifiedName, parse_name
from ..topology.model import DistTable
from ..topology.read import column_type, resolve_table, table_columns
from .fleet import Fleet
from .shard_pool import ShardPool, pool_or_temporary

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20  # routed and sent while the workers insert the previous chunk
LoadProgress = Callable[[int, int | None], None]  # (bytes done, bytes in all or None)


@dataclass(frozen=True)
class LoadResult:
    rows: int
    path: str  # "shards" (straight into the shards) or "coordinator"
    reason: str | None = None  # why the coordinator was used
    shards: int = 0
    seconds: float = 0.0


def copy_options(fmt: CopyFormat, *, header: bool) -> sql.Composable:
    parts: list[sql.Composable] = [sql.SQL("FORMAT csv" if fmt.csv else "FORMAT text")]
    if fmt.delimiter is not None:
        parts.append(sql.SQL("DELIMITER {}").format(sql.Literal(fmt.delimiter)))
    if header:
        parts.append(sql.SQL("HEADER true"))
    return sql.SQL(", ").join(parts)


def _chunks(source: bytes | BinaryIO, fmt: CopyFormat, chunk_bytes: int) -> Iterator[bytes]:
    """Pieces of whole records (the last one completed with a newline if the data lacks it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        pos = 0
        while pos < len(data):
            piece = data[pos:pos + chunk_bytes]
            end = copytext.complete_prefix(piece, fmt) if pos + chunk_bytes < len(data) else len(piece)
            while end == 0:  # one record longer than a chunk
                piece = data[pos:pos + len(piece) * 2]
                end = copytext.complete_prefix(piece, fmt) if pos + len(piece) < len(data) else len(piece)
            out = piece[:end]
            pos += end
            yield out if out.endswith(b"\n") else out + b"\n"
        return
    cutter = RecordCutter(fmt)
    while block := source.read(chunk_bytes):
        if piece := cutter.feed(block):
            yield piece
    if last := cutter.finish():
        yield last


class _Writer(threading.Thread):
    """Feeds one shard's COPY from a queue (one thread per shard: the sends release the GIL)."""

    def __init__(self, copy: psycopg.Copy) -> None:
        super().__init__(daemon=True)
        self.copy = copy
        self.items: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    self.copy.write(item)
                except BaseException as exc:  # reported by the feeding thread
                    self.error = exc


def load_copy(fleet: Fleet, table: str, source: bytes | BinaryIO, *, columns: list[str] | None = None,
              fmt: CopyFormat | None = None, pool: ShardPool | None = None, progress: LoadProgress | None = None,
              total: int | None = None, chunk_bytes: int = CHUNK_BYTES) -> LoadResult:
    """Load COPY data (``COPY table (columns) FROM STDIN`` in text or CSV format) into ``table``.

    ``source`` is the data itself or a binary file. Distributed tables with an integer hash or range
    key are loaded straight into the shards; anything else goes through the coordinator.
    """
    fmt = fmt or CopyFormat()
    started = time.monotonic()
    name = parse_name(table)
    oid = resolve_table(fleet.conn(), name)
    all_columns = table_columns(fleet.conn(), oid)
    columns = list(columns) if columns else all_columns
    unknown = [c for c in columns if c not in all_columns]
    if unknown:
        raise SpecError(f"table {table} has no column {unknown[0]}", hint=f"its columns are: {', '.join(all_columns)}")
    if total is None and isinstance(source, (bytes, bytearray, memoryview)):
        total = len(source)

    reason: str | None = None
    dist = fleet.topology().table(oid)
    if dist is None or dist.method == "reference" or dist.key is None:
        reason = f"{table} is not distributed by a key"
    elif dist.key not in columns:
        reason = f"the data has no {dist.key} column (the coordinator fills defaults)"
    if reason is None and dist is not None:
        try:
            rows, shards = _load_into_shards(fleet, dist, source, columns, fmt, pool, progress, total, chunk_bytes)
            return LoadResult(rows, "shards", None, shards, time.monotonic() - started)
        except CannotSplit as why:
            reason = str(why)
            if not isinstance(source, (bytes, bytearray, memoryview)):
                if not source.seekable():
                    raise SpecError(f"cannot route the data of {table} in the client: {why}",
                                    hint="give a file instead of a pipe so it can be read again through the "
                                         "coordinator, or load it with COPY through the coordinator") from None
                source.seek(0)
    log.info("loading %s through the coordinator: %s", table, reason)
    rows = _load_via_coordinator(fleet, name, source, columns, fmt, progress, total, chunk_bytes)
    return LoadResult(rows, "coordinator", reason, 0, time.monotonic() - started)


def _load_via_coordinator(fleet: Fleet, name: QualifiedName, source: bytes | BinaryIO, columns: list[str], fmt: CopyFormat,
                          progress: LoadProgress | None, total: int | None, chunk_bytes: int) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
        ident(name), sql.SQL(", ").join(map(sql.Identifier, columns)), copy_options(fmt, header=fmt.header))
    done = 0
    with fleet.new_coordinator_conn() as conn, conn.transaction(), conn.cursor() as cur:
        with cur.copy(statement) as cp:
            for chunk in _chunks(source, fmt, chunk_bytes):
                cp.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        return max(cur.rowcount, 0)


class _AbortedCopies(logging.Filter):
    """When one shard's COPY fails, the others are ended with CopyFail, and psycopg logs a warning for
    each ("error ignored terminating …"). The first error is what the caller gets; these are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error ignored terminating")


def _load_into_shards(fleet: Fleet, dist: DistTable, source: bytes | BinaryIO, columns: list[str], fmt: CopyFormat,
                      pool: ShardPool | None, progress: LoadProgress | None, total: int | None,
                      chunk_bytes: int) -> tuple[int, int]:
    shards = sorted(dist.shards, key=lambda s: s.index)
    targets = ShardTargets(dist.method, shards, column_type(fleet.conn(), dist.oid, str(dist.key)))
    column = columns.index(str(dist.key))
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    options = copy_options(fmt, header=False)
    tag = uuid.uuid4().hex[:12]
    prepared: list[tuple[str, str]] = []
    quiet = _AbortedCopies()
    psycopg_log = logging.getLogger("psycopg")
    with pool_or_temporary(fleet, pool) as shard_pool:
        with ExitStack() as conns:
            psycopg_log.addFilter(quiet)
            conns.callback(psycopg_log.removeFilter, quiet)
            opened = [conns.enter_context(shard_pool.conn(s.node, autocommit=False)) for s in shards]
            cursors = [c.cursor() for c in opened]
            with ExitStack() as copies:
                writers = []
                for shard, cur in zip(shards, cursors, strict=True):
                    cp = copies.enter_context(cur.copy(sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
                        ident(shard.shard_name), cols, options)))
                    writers.append(_Writer(cp))
                for w in writers:
                    w.start()
                try:
                    _feed(source, fmt, column, targets, writers, progress, total, chunk_bytes)
                finally:
                    for w in writers:
                        w.items.put(None)
                    for w in writers:
                        w.join()
                failed = next((w.error for w in writers if w.error is not None), None)
                if failed is not None:
                    raise failed
            # Every COPY has ended (a constraint error would have been raised above): prepare them all.
            rows = sum(max(cur.rowcount, 0) for cur in cursors)
            try:
                for shard, conn in zip(shards, opened, strict=True):
                    if shard_pool.two_phase(shard.node):
                        gid = f"{GID_PREFIX}copy_{tag}_{shard.shard_id}"
                        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
                        prepared.append((shard.node, gid))
                    else:
                        conn.commit()  # a worker without two-phase commit: committed shard by shard
            except BaseException:
                shard_pool.finish(prepared, commit=False)
                raise
        shard_pool.finish(prepared, commit=True)
    return rows, len(shards)


def _feed(source: bytes | BinaryIO, fmt: CopyFormat, column: int, targets: ShardTargets, writers: list[_Writer],
          progress: LoadProgress | None, total: int | None, chunk_bytes: int) -> None:
    done = 0
    first = True
    for piece in _chunks(source, fmt, chunk_bytes):
        done += len(piece)
        chunk = drop_header(piece, fmt) if first and fmt.header else piece
        first = False
        for writer, part in zip(writers, targets.split(chunk, column, fmt, len(writers)), strict=True):
            if part:
                writer.items.put(part)
            if writer.error is not None:
                raise writer.error
        if progress:
            progress(done, total)
