"""Which shard holds a key value: hash (PostgreSQL's hash partitioning, computed in Python for
integer keys), range and list bounds. A value the router cannot place exactly raises ``Refuse``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from .. import hashing
from .snapshot import INTEGER_TYPES, TEXT_TYPES, RoutedTable

INTEGER_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


@dataclass(frozen=True)
class Param:
    """A parameter ($n) whose value comes with Bind."""

    number: int


KeyValue = str | Param | None  # a constant in text form, a parameter, or NULL


class NotPlaced(Exception):
    """The value cannot be placed in one shard by the router."""


def value_of(key: KeyValue, params: Sequence[str | None]) -> str | None:
    if isinstance(key, Param):
        if not 1 <= key.number <= len(params):
            raise NotPlaced(f"parameter ${key.number} has no value")
        return params[key.number - 1]
    return key


def _integer(text: str, type_name: str) -> int:
    try:
        number = int(text.strip())
    except ValueError:
        raise NotPlaced(f"{text!r} is not an integer") from None
    limit = INTEGER_RANGES[type_name]
    if not -limit <= number < limit:
        raise NotPlaced(f"{number} is out of range for type {type_name}")
    return number


def shard_index(table: RoutedTable, key: KeyValue, params: Sequence[str | None]) -> int:
    text = value_of(key, params)
    if text is None:
        raise NotPlaced(f"NULL key for {table.name}")
    integer = table.key_type in INTEGER_TYPES
    if table.method == "hash":
        if not integer:
            raise NotPlaced(f"no client-side hash for key type {table.key_type or '?'}")
        value = _integer(text, table.key_type)
        if (placement := table.hash_placement) is not None:
            index = placement[1].get(hashing.remainder(value, placement[0], table.key_type))
            if index is not None:
                return index
            raise NotPlaced(f"no shard of {table.name} holds the key {text!r}")
        remainders: dict[int, int] = {}  # by modulus: one hash per key
        for shard in table.shards:
            if shard.modulus:
                if shard.modulus not in remainders:
                    remainders[shard.modulus] = hashing.remainder(value, shard.modulus, table.key_type)
                if remainders[shard.modulus] == shard.remainder:
                    return shard.index
    elif table.method == "range":
        if not integer:
            raise NotPlaced(f"range bounds of type {table.key_type or '?'} are compared on the coordinator")
        value = _integer(text, table.key_type)
        for shard in table.shards:
            if (shard.lower is None or int(shard.lower) <= value) and (shard.upper is None or value < int(shard.upper)):
                return shard.index
    elif table.method == "list":
        if not integer and table.key_type not in TEXT_TYPES:
            raise NotPlaced(f"list values of type {table.key_type or '?'} are compared on the coordinator")
        wanted = str(_integer(text, table.key_type)) if integer else text
        for shard in table.shards:
            if any((str(int(v)) if integer else v) == wanted for v in shard.values):
                return shard.index
    raise NotPlaced(f"no shard of {table.name} holds the key {text!r}")
