"""Distribution specs: hash, range, list (sites) and reference tables."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from ..errors import SpecError

MAX_IDENTIFIER = 63
MAX_SHARDS = 4096
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True, order=True)
class QualifiedName:
    """A table name; ``schema`` None means "resolve through the coordinator's search_path"."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        parts = [self.name] if self.schema is None else [self.schema, self.name]
        return ".".join(p if _PLAIN.match(p) and p == p.lower() else '"' + p.replace('"', '""') + '"'
                        for p in parts)


def _check_identifier(part: str, text: str) -> str:
    if not part:
        raise SpecError(f"malformed name {text!r}: empty identifier",
                        hint="write table or schema.table; quote mixed-case names with double quotes")
    if len(part.encode()) > MAX_IDENTIFIER:
        raise SpecError(f"malformed name {text!r}: identifier longer than {MAX_IDENTIFIER} bytes")
    if "\x00" in part:
        raise SpecError(f"malformed name {text!r}: NUL character")
    return part


def _split_identifiers(text: str) -> list[str]:
    """Split ``a.b`` / ``"A"."b.c"`` like PostgreSQL: unquoted parts fold to lower case."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        if i < n and text[i] == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise SpecError(f"malformed name {text!r}: unterminated quoted identifier")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        buf.append('"')
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            parts.append(_check_identifier("".join(buf), text))
            i = j + 1
        else:
            j = i
            while j < n and text[j] != ".":
                j += 1
            raw = text[i:j].strip()
            if not _PLAIN.match(raw or "-"):
                raise SpecError(f"malformed name {text!r}",
                                hint="use letters, digits and _ or a double-quoted identifier")
            parts.append(_check_identifier(raw.lower(), text))
            i = j
        if i >= n:
            return parts
        if text[i] != ".":
            raise SpecError(f"malformed name {text!r}: unexpected {text[i]!r}")
        i += 1


def parse_name(text: str) -> QualifiedName:
    parts = _split_identifiers(text.strip())
    if len(parts) == 1:
        return QualifiedName(None, parts[0])
    if len(parts) == 2:
        return QualifiedName(parts[0], parts[1])
    raise SpecError(f"malformed name {text!r}: expected table or schema.table")


def parse_column(text: str) -> str:
    parts = _split_identifiers(text.strip())
    if len(parts) != 1:
        raise SpecError(f"malformed column name {text!r}")
    return parts[0]


@dataclass(frozen=True)
class HashSpec:
    shard_count: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.shard_count <= MAX_SHARDS:
            raise SpecError(f"shard count {self.shard_count} is out of range", hint=f"use 1..{MAX_SHARDS}")


@dataclass(frozen=True)
class RangeShard:
    """[lower, upper): None is MINVALUE / MAXVALUE. Values are literals cast to the key's type."""

    lower: str | None
    upper: str | None
    node: str | None = None


ORDER_HINT = "list the bounds in ascending order, each once, e.g. min,1000,2000,max"


@dataclass(frozen=True)
class RangeSpec:
    shards: tuple[RangeShard, ...]

    def __post_init__(self) -> None:
        if not self.shards:
            raise SpecError("a range distribution needs at least one range", hint="give --bounds a,b,c")
        for shard in self.shards[1:-1]:
            if shard.lower is None or shard.upper is None:
                raise SpecError("only the first range may start at MINVALUE and only the last end at MAXVALUE")
        if self.shards[0].upper is None and len(self.shards) > 1:
            raise SpecError("only the last range may end at MAXVALUE")
        for shard in self.shards:
            if shard.lower is not None and shard.lower == shard.upper:
                raise SpecError(f"range bound {shard.lower} is given twice: the range [{shard.lower}, {shard.upper}) "
                                "would be empty", hint=ORDER_HINT)


def check_range_order(shards: tuple[RangeShard, ...], rank: Mapping[str, int]) -> None:
    """Ranges must be non-empty and ascending: each lower bound below its upper bound, each upper bound at
    most the next range's lower bound. ``rank`` orders every finite bound as the key's type does (equal
    values, such as 01 and 1 for an integer key, have equal ranks); the coordinator computes it before
    anything is created."""
    for shard in shards:
        if shard.lower is None or shard.upper is None:
            continue
        if rank[shard.lower] == rank[shard.upper]:
            raise SpecError(f"range bounds {shard.lower} and {shard.upper} are the same value: the range "
                            f"[{shard.lower}, {shard.upper}) would be empty", hint=ORDER_HINT)
        if rank[shard.lower] > rank[shard.upper]:
            raise SpecError(f"range bounds are not ascending: {shard.lower} comes before {shard.upper}",
                            hint=ORDER_HINT)
    for first, second in pairwise(shards):
        if first.upper is not None and second.lower is not None and rank[first.upper] > rank[second.lower]:
            raise SpecError(f"ranges overlap: [{first.lower}, {first.upper}) and [{second.lower}, {second.upper})",
                            hint=ORDER_HINT)


def check_list_distinct(shards: tuple[ListShard, ...], rank: Mapping[str, int]) -> None:
    """No value may belong to two list shards, also when spelled differently (01 and 1 for an integer key)."""
    seen: dict[int, str] = {}
    for shard in shards:
        for value in shard.values:
            other = seen.setdefault(rank[value], value)
            if other != value:
                raise SpecError(f"list values {other!r} and {value!r} are the same value of the key",
                                hint="each value belongs to one site; give it once")


@dataclass(frozen=True)
class ListShard:
    values: tuple[str, ...]
    node: str | None = None


@dataclass(frozen=True)
class ListSpec:
    shards: tuple[ListShard, ...]

    def __post_init__(self) -> None:
        if not self.shards:
            raise SpecError("a list distribution needs at least one list of values",
                            hint="give --list VALUE[,VALUE]=NODE once per site")
        seen: set[str] = set()
        for shard in self.shards:
            if not shard.values:
                raise SpecError("a list shard needs at least one value")
            for value in shard.values:
                if value in seen:
                    raise SpecError(f"list value {value!r} is given twice", hint="each value belongs to one site")
                seen.add(value)


Method = HashSpec | RangeSpec | ListSpec


@dataclass(frozen=True)
class DistributeSpec:
    table: QualifiedName
    key: str
    method: Method | None = None  # None only with colocate_with
    colocate_with: QualifiedName | None = None
    nodes: tuple[str, ...] | None = None  # placement order for hash shards (default: all workers)

    def __post_init__(self) -> None:
        if self.method is None and self.colocate_with is None:
            raise SpecError("say how to distribute", hint="give --shards, --bounds, --list or --colocate-with")


@dataclass(frozen=True)
class ReferenceSpec:
    table: QualifiedName


def parse_range_bounds(text: str, nodes: tuple[str, ...] | None = None) -> RangeSpec:
    """``"min,0,250000,max"`` → ranges [min,0) [0,250000) [250000,max); ``min``/``max`` are open ends."""
    raw = [b.strip() for b in text.split(",")]
    if len(raw) < 2 or any(b == "" for b in raw):
        raise SpecError(f"bad range bounds {text!r}", hint="give at least two comma-separated bounds, e.g. 0,1000,2000")
    values: list[str | None] = []
    for i, b in enumerate(raw):
        low = b.lower()
        if low in ("min", "minvalue"):
            if i != 0:
                raise SpecError(f"bad range bounds {text!r}: min may only come first")
            values.append(None)
        elif low in ("max", "maxvalue"):
            if i != len(raw) - 1:
                raise SpecError(f"bad range bounds {text!r}: max may only come last")
            values.append(None)
        else:
            values.append(b)
    count = len(values) - 1
    if nodes is not None and len(nodes) not in (0, count):
        pass  # placement round-robins over the given nodes
    shards = tuple(
        RangeShard(values[i], values[i + 1], nodes[i % len(nodes)] if nodes else None) for i in range(count)
    )
    return RangeSpec(shards)


def parse_list_arg(items: tuple[str, ...] | list[str]) -> ListSpec:
    """``("paris=w1", "lagos,abuja=w2")`` → two list shards placed on w1 and w2."""
    shards = []
    for item in items:
        values_text, sep, node = item.rpartition("=")
        if not sep or not node.strip() or not values_text.strip():
            raise SpecError(f"bad list shard {item!r}", hint="write VALUE[,VALUE...]=NODE, e.g. paris=w1")
        values = tuple(v.strip() for v in values_text.split(","))
        if any(v == "" for v in values):
            raise SpecError(f"bad list shard {item!r}: empty value")
        shards.append(ListShard(values, node.strip()))
    return ListSpec(tuple(shards))
