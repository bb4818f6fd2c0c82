"""Pure checks of a table's shard set as a topology file describes it: one shard per part of the key space."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from ..errors import TopologyError
from ..spec import QualifiedName
from ..topology.model import Shard

HINT = "nothing was imported; export the topology again from a coordinator that matches the workers"


def check_coverage(name: QualifiedName, method: str, shards: Sequence[Shard]) -> None:
    """TopologyError unless the shards cover the hash space, the ranges or the list values exactly once."""
    if not shards:
        raise TopologyError(f"{name} has no shards in the topology file", hint=HINT)
    if method == "reference":
        nodes = [s.node for s in shards]
        dup = next((n for n in nodes if nodes.count(n) > 1), None)
        if dup is not None:
            raise TopologyError(f"{name} has two reference copies on node {dup} in the topology file", hint=HINT)
        return
    ordered = sorted(shards, key=lambda s: s.index)
    indexes = [s.index for s in ordered]
    missing = sorted(set(range(len(ordered) + max(0, max(indexes) + 1 - len(ordered)))) - set(indexes))
    if missing or len(set(indexes)) != len(indexes):
        what = f"shard index {missing[0]} is missing" if missing else "a shard index appears twice"
        raise TopologyError(f"{name}: {what} in the topology file ({len(ordered)} shards)", hint=HINT)
    if method == "hash":
        count = len(ordered)
        for s in ordered:
            if s.modulus != count or s.remainder != s.index:
                raise TopologyError(f"{name}: shard {s.shard_id} has modulus {s.modulus} remainder {s.remainder}; "
                                    f"{count} hash shards need modulus {count} and remainders 0..{count - 1}",
                                    hint=HINT)
    elif method == "range":
        for a, b in pairwise(ordered):
            if a.upper is None or a.upper != b.lower:
                raise TopologyError(f"{name}: shard {a.shard_id} ends at {a.upper or 'MAXVALUE'} but shard "
                                    f"{b.shard_id} starts at {b.lower or 'MINVALUE'}: the ranges leave a gap or overlap",
                                    hint=HINT)
    elif method == "list":
        seen: dict[str, int] = {}
        for s in ordered:
            if not s.values:
                raise TopologyError(f"{name}: list shard {s.shard_id} has no values", hint=HINT)
            for v in s.values:
                if seen.setdefault(v, s.shard_id) != s.shard_id:
                    raise TopologyError(f"{name}: value {v!r} is in shards {seen[v]} and {s.shard_id}", hint=HINT)
    else:
        raise TopologyError(f"{name}: unknown method {method!r} in the topology file", hint=HINT)
