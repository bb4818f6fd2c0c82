"""A statement's simple constants made parameters (``$1``, ``$2``, …), so that statements that differ only in
constants share one analysis (pure): the first step of routing every simple-protocol statement.

PostgreSQL's own scanner (pglast) decides what a constant is. For the common statement — plain ASCII, no
comment, no quoted identifier, no ``$``, no backslash, no string with a prefix (``E''``, ``U&''``, ``B''``)
or continued over a newline, no number in a newer notation (``0x1F``, ``1_000``) — a regular expression
finds the same integer, decimal and string constants at a quarter of the cost (pglast builds an object per
token); any statement outside that goes to the scanner. tests/test_router_decide.py checks that both agree
on generated statements."""

from __future__ import annotations

import re
from typing import NamedTuple

from pglast.parser import ParseError, scan


class Normalized(NamedTuple):  # a tuple: made for every routed statement, cheaper than a dataclass
    """A statement with its simple constants replaced by parameters ($1, $2, …)."""

    text: str
    values: tuple[str, ...]  # the constants, in text form, as parameter values
    shifts: tuple[tuple[int, int], ...]  # (offset in ``text`` after a placeholder, its growth in the original)

    def position(self, offset: int) -> int:
        """An offset in ``text`` that is not inside a placeholder, mapped to the original statement."""
        shifts = self.shifts
        if not shifts or offset < shifts[0][0]:  # before the first constant (a table name, usually)
            return offset
        return offset + sum(grow for at, grow in shifts if at <= offset)


_PLAIN_STRING = re.compile(r"'(?:[^']|'')*'")
# a string, or a number that does not start inside an identifier (the digits of ``t1`` are not one): each match
# is a constant, so the search skips everything else without a step of ours
_CONSTANT = re.compile(r"'(?:[^']|'')*'|(?:(?<![A-Za-z0-9_])\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
# what sends a statement to the scanner: non-ASCII, $, a quoted identifier, a backslash, a comment, ..
_UNUSUAL = re.compile(r'[^\x00-\x7f]|[$"\\]|--|/\*|\.\.')
_CONTINUED = re.compile(r"\s*\n\s*'")  # after a string: PostgreSQL joins the next one to it
Constant = tuple[int, int, str]  # start, end (exclusive), value


def normalize(sql: str) -> Normalized | None:
    """None when the statement has parameters already or a constant that is not plain."""
    constants = _constants_by_expression(sql)
    if constants is None:
        constants = _constants_by_scanner(sql)
        if constants is None:
            return None
    parts: list[str] = []
    values: list[str] = []
    shifts: list[tuple[int, int]] = []
    last = length = 0
    for start, end, value in constants:
        placeholder = f"${len(values) + 1}"
        parts += [sql[last:start], placeholder]
        length += start - last + len(placeholder)
        shifts.append((length, end - start - len(placeholder)))
        values.append(value)
        last = end
    parts.append(sql[last:])
    return Normalized("".join(parts), tuple(values), tuple(shifts))


def _constants_by_scanner(sql: str) -> list[Constant] | None:
    try:
        tokens = scan(sql)
    except ParseError:
        return None
    constants: list[Constant] = []
    for token in tokens:
        if token.name == "PARAM":
            return None
        if token.name not in ("ICONST", "FCONST", "SCONST"):
            continue
        raw = sql[token.start:token.end + 1]
        if token.name == "SCONST":
            if not _PLAIN_STRING.fullmatch(raw):
                return None  # E'', U&'', $$…$$, continued strings: analyzed from their own text
            constants.append((token.start, token.end + 1, raw[1:-1].replace("''", "'")))
        else:
            constants.append((token.start, token.end + 1, raw))
    return constants


def _constants_by_expression(sql: str) -> list[Constant] | None:
    """The constants of a statement without anything unusual; None: ask the scanner."""
    if _UNUSUAL.search(sql) is not None:
        return None
    constants: list[Constant] = []
    quotes = 0
    for found in _CONSTANT.finditer(sql):
        start, end = found.span()
        if sql[start] == "'":
            before = sql[start - 1:start]
            if (before and (before.isalnum() or before in "_&'")) or _CONTINUED.match(sql, end):
                return None  # a prefixed string (E'', B'', U&'') or one PostgreSQL continues
            quotes += end - start - len(sql[start + 1:end - 1].replace("''", ""))
            constants.append((start, end, sql[start + 1:end - 1].replace("''", "'")))
        else:
            after = sql[end:end + 1]
            if after and (after.isalnum() or after in "_."):
                return None  # 0x1F, 1_000, trailing junk, a malformed number: the scanner says what it is
            constants.append((start, end, sql[start:end]))
    if quotes != sql.count("'"):
        return None  # a quote outside every string: unterminated, or not what it seems
    return constants
