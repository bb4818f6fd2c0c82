"""Splitting COPY data by key, without a server: compared with a plain Python reading of the same data."""

from __future__ import annotations

import csv
import io
import random

import numpy as np
import pytest

from pgfleet.copytext import (
    CannotSplit,
    CopyFormat,
    complete_prefix,
    delimiters,
    key_starts,
    parse_ints,
    records,
    split,
)
from pgfleet.errors import SpecError

TEXT = CopyFormat()
CSV = CopyFormat(csv=True)


def keys_of(data: bytes, column: int, fmt: CopyFormat) -> list[int]:
    recs = records(data, fmt)
    return parse_ints(data, key_starts(data, recs, column, delimiters(data, recs, fmt)), fmt).tolist()


def test_text_keys_in_any_column() -> None:
    data = b"1\ta\t-7\n22\tb b\t0\n-333\t\\N\t123456789012345678\n"
    assert keys_of(data, 0, TEXT) == [1, 22, -333]
    assert keys_of(data, 2, TEXT) == [-7, 0, 123456789012345678]
    with pytest.raises(CannotSplit, match="not a decimal integer"):
        keys_of(data, 1, TEXT)  # letters, \N


def test_csv_quotes_hide_delimiters_and_newlines() -> None:
    data = b'"5","a,b",1\n6,"line\none ""quoted""",2\n"-7",,3\n'
    recs = records(data, CSV)
    assert len(recs) == 3 and not recs.simple
    assert keys_of(data, 0, CSV) == [5, 6, -7]
    assert keys_of(data, 2, CSV) == [1, 2, 3]
    parts = split(data, recs, np.array([1, 0, 1]), 2)
    assert parts == [b'6,"line\none ""quoted""",2\n', b'"5","a,b",1\n"-7",,3\n']


@pytest.mark.parametrize(("data", "column", "fmt", "why"), [
    (b"\\N\tx\n", 0, TEXT, "NULL"),
    (b",x\n", 0, CSV, "NULL"),
    (b"12a\tx\n", 0, TEXT, "not a plain decimal"),
    (b"0x1F\tx\n", 0, TEXT, "not a plain decimal"),
    (b"1234567890123456789\tx\n", 0, TEXT, "18 digits"),
    (b"1\tx\\\ny\n", 0, TEXT, "escaped newline"),
    (b"1\tx\\\ty\n", 0, TEXT, "escaped newline or delimiter"),
    (b"1\tx\r\n", 0, TEXT, "carriage return"),
    (b"1\tx", 0, TEXT, "end with a newline"),
    (b"1\tx\n2\n", 1, TEXT, "fewer than 2 fields"),
    (b"1\tx\n\\.\n", 0, TEXT, "NULL|not a"),
])
def test_what_cannot_be_split(data: bytes, column: int, fmt: CopyFormat, why: str) -> None:
    with pytest.raises(CannotSplit, match=why):
        keys_of(data, column, fmt)


def test_random_csv_against_the_csv_module() -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(3000):
        key = rng.randint(-10**17, 10**17)
        text = "".join(rng.choice('ab ,"\n\t') for _ in range(rng.randint(0, 12)))
        rows.append([str(rng.randint(0, 9)), f"{key}", text])
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=rng.choice([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])).writerows(rows)
    data = out.getvalue().encode()
    recs = records(data, CSV)
    assert len(recs) == len(rows)
    assert keys_of(data, 1, CSV) == [int(r[1]) for r in rows]
    target = np.array([int(r[0]) % 3 for r in rows])
    parts = split(data, recs, target, 3)
    for i, part in enumerate(parts):
        assert list(csv.reader(io.StringIO(part.decode()))) == [r for r in rows if int(r[0]) % 3 == i]


def test_complete_prefix_stops_at_whole_records() -> None:
    assert complete_prefix(b"1\ta\n2\tb", TEXT) == 4
    assert complete_prefix(b"1\ta", TEXT) == 0
    assert complete_prefix(b'1,"a\nb"\n2,"c\n', CSV) == 8


def test_split_keeps_order_and_every_byte() -> None:
    lines = [f"{i}\tv{i}\n".encode() for i in range(1000)]
    data = b"".join(lines)
    recs = records(data, TEXT)
    assert recs.simple
    target = np.array([i % 7 for i in range(1000)])
    parts = split(data, recs, target, 8)
    assert parts[7] == b""
    for t in range(7):
        assert parts[t] == b"".join(line for i, line in enumerate(lines) if i % 7 == t)


def test_delimiter_validation() -> None:
    assert CopyFormat(delimiter="|").delim == ord("|")
    with pytest.raises(SpecError, match="single-byte"):
        CopyFormat(delimiter="ab")
