"""Which shard each COPY record goes to, read from its key field only (copytext.py does the reading):
shared by the Python loader (cluster/loader.py ``load_copy``) and the router's COPY FROM STDIN
(router/copyin.py). Anything the fast split cannot decide raises CannotSplit; the caller then lets
PostgreSQL's own COPY parser decide (through the coordinator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from . import copytext, hashing
from .copytext import CannotSplit, CopyFormat
from .topology.model import Shard


class ShardTargets:
    """Maps the records of a chunk to positions in the shard list: integer keys by hash remainder or
    range bound, list keys by their text."""

    def __init__(self, method: str, shards: Sequence[Shard], key_type: str) -> None:
        self.key_type = key_type
        self.method = method
        if method == "list":
            self.by_value = {v.encode(): pos for pos, s in enumerate(shards) for v in s.values}
            return
        if key_type not in hashing.INTEGER_TYPES:
            raise CannotSplit(f"no client-side routing for key type {key_type or 'unknown'}")
        if method == "hash":
            self.modulus = shards[0].modulus or len(shards)
            self.by_remainder = np.empty(self.modulus, dtype=np.int64)
            for pos, s in enumerate(shards):
                self.by_remainder[int(s.remainder or 0)] = pos
        elif method == "range":
            order = sorted(range(len(shards)), key=lambda i: _bound(shards[i].lower, -2**63))
            self.range_pos = np.array(order, dtype=np.int64)
            self.lowers = np.array([_bound(shards[i].lower, -2**63) for i in order], dtype=np.int64)
            self.uppers = np.array([_bound(shards[i].upper, 2**63 - 1) for i in order], dtype=np.int64)
            self.open_upper = np.array([shards[i].upper is None for i in order])
        else:
            raise CannotSplit(f"{method} tables are loaded through the coordinator")

    def __call__(self, chunk: bytes, recs: copytext.Records, column: int, fmt: CopyFormat) -> npt.NDArray[np.int64]:
        if self.method == "list":  # the key's end is needed too: the delimiters are scanned once for both
            delims = copytext.delimiters(chunk, recs, fmt)
            begin = copytext.key_starts(chunk, recs, column, delims)
            found = [self.by_value.get(v, -1) for v in copytext.key_texts(chunk, recs, begin, fmt, delims)]
            out = np.array(found, dtype=np.int64)
            if np.any(out < 0):
                raise CannotSplit("a key that is in no list shard")
            return out
        # integer keys end where their digits do: the first column needs no delimiter scan at all
        begin = copytext.key_starts(chunk, recs, column, copytext.delimiters(chunk, recs, fmt) if column else None)
        keys = copytext.parse_ints(chunk, begin, fmt)
        if self.method == "hash":
            hashed: npt.NDArray[np.int64] = self.by_remainder[hashing.remainders(keys, self.modulus, self.key_type)]
            return hashed
        slot = np.searchsorted(self.lowers, keys, side="right") - 1
        inside = (slot >= 0) & ((keys < self.uppers[np.maximum(slot, 0)]) | self.open_upper[np.maximum(slot, 0)])
        if not inside.all():
            raise CannotSplit("a key outside every range shard")
        ranged: npt.NDArray[np.int64] = self.range_pos[slot]
        return ranged

    def split(self, chunk: bytes, column: int, fmt: CopyFormat, count: int) -> list[bytes]:
        """The records of ``chunk`` (whole records) for each of the ``count`` shards, in their order."""
        recs = copytext.records(chunk, fmt)
        return copytext.split(chunk, recs, self(chunk, recs, column, fmt), count)


def _bound(value: str | None, missing: int) -> int:
    return missing if value is None else int(value)


def drop_header(chunk: bytes, fmt: CopyFormat) -> bytes:
    """``chunk`` without its first record (the header line)."""
    recs = copytext.records(chunk, fmt)
    return chunk[int(recs.ends[0]) + 1:] if len(recs) else chunk


class RecordCutter:
    """Cuts a stream of COPY data arriving in arbitrary pieces into pieces of whole records."""

    def __init__(self, fmt: CopyFormat) -> None:
        self.fmt = fmt
        self.carry = b""

    def feed(self, block: bytes) -> bytes:
        """The whole records completed by ``block`` (b'' while none is)."""
        data = self.carry + block if self.carry else block
        end = copytext.complete_prefix(data, self.fmt)
        self.carry = data[end:]
        return data[:end]

    def finish(self) -> bytes:
        """The last record, completed with a newline when the data lacks it."""
        rest, self.carry = self.carry, b""
        return rest if not rest or rest.endswith(b"\n") else rest + b"\n"
