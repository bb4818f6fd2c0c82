"""Splitting COPY data (text or CSV) into per-shard pieces without parsing rows in Python.

The loader (cluster/loader.py) routes COPY data straight into the shards. Formatting rows in Python is
what makes a client-side load slow; data that is already COPY text needs none: only the key field of
each record is read, and records are moved as they are. Everything here works on whole buffers with
numpy: record boundaries, the start of the key field, integer keys read digit by digit. Whatever does
not fit the simple cases (an escaped newline or delimiter, carriage returns, a NULL or non-decimal key,
the end-of-data marker …) raises CannotSplit, and the caller sends the data through the coordinator,
where PostgreSQL's own parser decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from .errors import SpecError

Ints = npt.NDArray[np.int64]

NEWLINE, QUOTE, BACKSLASH, CR, MINUS, ZERO = 10, 34, 92, 13, 45, 48
MAX_DIGITS = 18  # 18 decimal digits always fit in int64; longer keys go through the coordinator
WINDOW = MAX_DIGITS + 3  # quote, minus sign, digits, the byte after them


class CannotSplit(Exception):
    """The data needs PostgreSQL's own COPY parser (the message says why)."""


@dataclass(frozen=True)
class CopyFormat:
    csv: bool = False
    delimiter: str | None = None  # default: tab for text, comma for CSV
    header: bool = False  # the first record names the columns

    def __post_init__(self) -> None:
        raw = self._delimiter().encode()
        if len(raw) != 1 or raw in (b"\n", b"\r", b"\\", b'"'):
            raise SpecError(f"the delimiter must be one single-byte character other than newline, "
                            f"carriage return, backslash and quote, not {self._delimiter()!r}")

    def _delimiter(self) -> str:
        return self.delimiter if self.delimiter is not None else ("," if self.csv else "\t")

    @property
    def delim(self) -> int:
        return self._delimiter().encode()[0]


@dataclass(frozen=True)
class Records:
    """Records of a buffer: record i is buf[starts[i]:ends[i] + 1] (ends[i] is its newline)."""

    starts: Ints
    ends: Ints
    parity: Ints | None  # CSV: number of quotes up to each byte (odd = inside a quoted field)
    simple: bool  # every newline ends a record (no newline inside quotes)

    def __len__(self) -> int:
        return len(self.starts)


def complete_prefix(data: bytes, fmt: CopyFormat) -> int:
    """Length of the longest prefix of ``data`` made of whole records (0 if none is complete)."""
    if not fmt.csv:
        return data.rfind(b"\n") + 1
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == NEWLINE)
    if not len(newlines):
        return 0
    quotes = np.cumsum(buf == QUOTE, dtype=np.int64)
    outside = newlines[(quotes[newlines] & 1) == 0]
    return int(outside[-1]) + 1 if len(outside) else 0


def records(data: bytes, fmt: CopyFormat) -> Records:
    """Split ``data`` (whole records, the last one ending with a newline) into records."""
    if data and data[-1] != NEWLINE:
        raise CannotSplit("the data does not end with a newline")
    if b"\r" in data:
        raise CannotSplit("carriage returns in the data")
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == NEWLINE)
    parity: Ints | None = None
    simple = True
    if fmt.csv:
        if b'"' in data:
            parity = np.cumsum(buf == QUOTE, dtype=np.int64)
            outside = newlines[(parity[newlines] & 1) == 0]
            simple = len(outside) == len(newlines)
            newlines = outside
    elif b"\\" in data:
        # A backslash before a newline or the delimiter makes it data, so records or fields would not be
        # what this split sees. Other escapes (\t, \\, \N …) only matter inside the key field, which must
        # then be plain digits (parse_ints refuses anything else).
        escapes = np.flatnonzero(buf == BACKSLASH)
        following = buf[escapes + 1]
        if np.any((following == NEWLINE) | (following == fmt.delim)):
            raise CannotSplit("an escaped newline or delimiter in text-format data")
    starts = np.empty(len(newlines), dtype=np.int64)
    if len(newlines):
        starts[0] = 0
        starts[1:] = newlines[:-1] + 1
    return Records(starts, newlines.astype(np.int64), parity, simple)


def delimiters(data: bytes, recs: Records, fmt: CopyFormat) -> Ints:
    """Positions of the field delimiters (in CSV, those outside quotes: inside quotes they are data)."""
    delims = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == fmt.delim)
    if recs.parity is not None and len(delims):
        delims = delims[(recs.parity[delims] & 1) == 0]
    return delims.astype(np.int64)


def key_starts(data: bytes, recs: Records, column: int, delims: Ints | None) -> Ints:
    """Where field number ``column`` (0-based) begins in every record (``delims`` from delimiters(),
    not needed for the first column)."""
    if column == 0:
        return recs.starts
    if delims is None:
        raise ValueError("key_starts needs the delimiters for a column other than the first")
    nth = np.searchsorted(delims, recs.starts) + (column - 1)
    if len(nth) and int(nth.max()) >= len(delims):
        raise CannotSplit(f"a record has fewer than {column + 1} fields")
    begin = delims[nth] + 1
    if np.any(begin > recs.ends):
        raise CannotSplit(f"a record has fewer than {column + 1} fields")
    return begin.astype(np.int64)


def parse_ints(data: bytes, begin: Ints, fmt: CopyFormat) -> Ints:
    """The integer key that starts at each position: an optional minus sign and up to 18 decimal
    digits, followed by the delimiter or the end of the record (in CSV optionally in quotes)."""
    if not len(begin):
        return np.empty(0, dtype=np.int64)
    buf = np.frombuffer(data + b"\0" * WINDOW, dtype=np.uint8)  # every window stays inside the buffer
    win = sliding_window_view(buf, WINDOW)[begin]
    quoted = win[:, 0] == QUOTE if fmt.csv else np.zeros(len(begin), dtype=bool)
    if quoted.any():
        win = np.where(quoted[:, None], np.roll(win, -1, axis=1), win)
    negative = win[:, 0] == MINUS
    if negative.any():
        win = np.where(negative[:, None], np.roll(win, -1, axis=1), win)
    is_digit = (win >= ZERO) & (win <= ZERO + 9)
    length = np.argmin(is_digit, axis=1)  # the first byte that is not a digit
    if np.any(length == 0) or np.any(length > MAX_DIGITS):
        raise CannotSplit("a key that is empty (NULL), not a decimal integer or longer than 18 digits")
    after = win[np.arange(len(begin)), length]
    terminator_ok = np.where(quoted, after == QUOTE, (after == fmt.delim) | (after == NEWLINE))
    if not terminator_ok.all():
        raise CannotSplit("a key that is not a plain decimal integer")
    values = np.zeros(len(begin), dtype=np.int64)
    for j in range(int(length.max())):
        digit = win[:, j].astype(np.int64) - ZERO
        values = np.where(j < length, values * 10 + digit, values)
    return np.where(negative, -values, values)


def split(data: bytes, recs: Records, target: npt.NDArray[np.integer], count: int) -> list[bytes]:
    """The records of each target 0 … count-1, concatenated in their original order."""
    if recs.simple:
        lines = data.split(b"\n")  # one per record, the last one empty
        sep, tail = b"\n", b"\n"
    else:
        lines = [data[s:e + 1] for s, e in zip(recs.starts.tolist(), recs.ends.tolist(), strict=True)]
        sep, tail = b"", b""
    out: list[bytes] = []
    for i in range(count):
        chosen = np.flatnonzero(target == i).tolist()
        if not chosen:
            out.append(b"")
        elif len(chosen) == 1:
            out.append(lines[chosen[0]] + tail)
        else:
            out.append(sep.join(itemgetter(*chosen)(lines)) + tail)
    return out


def key_texts(data: bytes, recs: Records, begin: Ints, fmt: CopyFormat, delims: Ints) -> list[bytes]:
    """The key field of every record as raw text (CSV quotes removed), for list tables. A field with a
    backslash (text format) or an inner quote (CSV) would need decoding: CannotSplit."""
    nxt = np.searchsorted(delims, begin)
    ends = np.minimum(np.append(delims, len(data))[nxt], recs.ends)
    out = [data[s:e] for s, e in zip(begin.tolist(), ends.tolist(), strict=True)]
    if fmt.csv:
        out = [f[1:-1] if len(f) >= 2 and f[0] == QUOTE and f[-1] == QUOTE else f for f in out]
        if any(b'"' in f for f in out):
            raise CannotSplit("a quoted key with quotes inside")
    elif any(b"\\" in f for f in out):
        raise CannotSplit("a backslash escape in a key")
    return out
