"""Text edits of a statement at token positions from the PostgreSQL scanner (pglast): a table name's
extent, the rows of a VALUES list, replacing spans. Never string search: a name inside a string
literal, a comment or a longer identifier is never touched."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from pglast.parser import scan
from psycopg import sql


@dataclass(frozen=True)
class Edit:
    start: int
    end: int  # exclusive
    text: str


@functools.lru_cache(maxsize=256)
def scanned_tokens(text: str) -> tuple[tuple[int, int, str], ...]:
    """(start, exclusive end, token name) of every token, in character offsets."""
    return tuple((t.start, t.end + 1, t.name) for t in scan(text))


def name_span(text: str, location: int) -> tuple[int, int]:
    """The extent of a possibly dotted name (``a``, ``s.a``, ``"S"."a b"``) starting at ``location``."""
    tokens = scanned_tokens(text)
    i = next(n for n, t in enumerate(tokens) if t[0] == location)
    end = tokens[i][1]
    while i + 2 < len(tokens) and tokens[i + 1][2] == "ASCII_46":
        end = tokens[i + 2][1]
        i += 2
    return location, end


def values_rows(text: str, after: int) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """The span of each parenthesized row of the first VALUES list after offset ``after``, and the span
    from the first row's '(' to the last row's ')'."""
    tokens = scanned_tokens(text)
    i = next(n for n, t in enumerate(tokens) if t[0] > after and t[2] == "VALUES") + 1
    rows: list[tuple[int, int]] = []
    while i < len(tokens) and tokens[i][2] == "ASCII_40":
        start, depth = tokens[i][0], 0
        while i < len(tokens):
            name = tokens[i][2]
            depth += (name == "ASCII_40") - (name == "ASCII_41")
            if depth == 0:
                break
            i += 1
        rows.append((start, tokens[i][1]))
        i += 1
        if i < len(tokens) and tokens[i][2] == "ASCII_44":
            i += 1
        else:
            break
    return rows, ((rows[0][0], rows[-1][1]) if rows else (0, 0))


def apply_edits(text: str, edits: Sequence[Edit]) -> str:
    if len(edits) == 1:  # one table: the routed statement's usual case
        edit = edits[0]
        return text[:edit.start] + edit.text + text[edit.end:]
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[:edit.start] + edit.text + text[edit.end:]
    return text


@functools.lru_cache(maxsize=4096)
def qualified(*parts: str) -> str:
    """A quoted, dotted identifier (psycopg's quoting)."""
    return sql.Identifier(*parts).as_string()
