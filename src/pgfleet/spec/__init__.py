"""What the user wants: frozen dataclasses, parsed and validated once."""

from .distribution import (
    DistributeSpec,
    HashSpec,
    ListShard,
    ListSpec,
    QualifiedName,
    RangeShard,
    RangeSpec,
    ReferenceSpec,
    parse_list_arg,
    parse_name,
    parse_range_bounds,
)

__all__ = [
    "DistributeSpec",
    "HashSpec",
    "ListShard",
    "ListSpec",
    "QualifiedName",
    "RangeShard",
    "RangeSpec",
    "ReferenceSpec",
    "parse_list_arg",
    "parse_name",
    "parse_range_bounds",
]
