"""PostgreSQL's hash partitioning, computed in Python for integer keys.

The fast paths route a statement straight to the worker that owns a key; for that the client must
compute the same partition PostgreSQL would. For smallint/integer/bigint keys this module reproduces
``hashint8extended``/``hashint4extended`` (Bob Jenkins' lookup3 with a 64-bit seed) and the partition
arithmetic; tests compare it with the server for many keys. Other key types are routed by asking the
server (or fall back to the coordinator).
"""

from __future__ import annotations

from typing import Any

from .plan.tables import HASH_COMBINE_CONST, HASH_PARTITION_SEED

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & M32; a ^= _rot(c, 4); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rot(a, 6); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rot(b, 8); b = (b + a) & M32
    a = (a - c) & M32; a ^= _rot(c, 16); c = (c + b) & M32
    b = (b - a) & M32; b ^= _rot(a, 19); a = (a + c) & M32
    c = (c - b) & M32; c ^= _rot(b, 4); b = (b + a) & M32
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b; c = (c - _rot(b, 14)) & M32
    a ^= c; a = (a - _rot(c, 11)) & M32
    b ^= a; b = (b - _rot(a, 25)) & M32
    c ^= b; c = (c - _rot(b, 16)) & M32
    a ^= c; a = (a - _rot(c, 4)) & M32
    b ^= a; b = (b - _rot(a, 14)) & M32
    c ^= b; c = (c - _rot(b, 24)) & M32
    return a, b, c


def hash_uint32_extended(k: int, seed: int) -> int:
    """lookup3 of one 32-bit word with a 64-bit seed, as an unsigned 64-bit value."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & M32
    seed &= M64
    if seed:
        a = (a + (seed >> 32)) & M32
        b = (b + (seed & M32)) & M32
        a, b, c = _mix(a, b, c)
    a = (a + (k & M32)) & M32
    a, b, c = _final(a, b, c)
    return ((b << 32) | c) & M64


def hashint8extended(value: int, seed: int) -> int:
    lo = value & M32
    hi = (value >> 32) & M32
    lo ^= hi if value >= 0 else (~hi & M32)
    return hash_uint32_extended(lo, seed)


def hashint4extended(value: int, seed: int) -> int:
    return hash_uint32_extended(value & M32, seed)


def _seeded() -> tuple[int, int, int]:
    a = b = c = (0x9E3779B9 + 4 + 3923095) & M32
    return _mix((a + (HASH_PARTITION_SEED >> 32)) & M32, (b + (HASH_PARTITION_SEED & M32)) & M32, c)


_A0, _B0, _C0 = _seeded()  # lookup3's state after the partition seed, the same for every key


def remainder(value: int, modulus: int, type_name: str = "bigint") -> int:
    """The hash partition (remainder) PostgreSQL gives an integer key for ``modulus`` partitions: what
    ``hashint8extended`` / ``hashint4extended`` with the partition seed give, with the seeded state computed
    once and lookup3's final mix written out (the router hashes a key per routed statement)."""
    if type_name == "bigint":
        k = value & M32
        hi = (value >> 32) & M32
        k ^= hi if value >= 0 else (~hi & M32)
    elif type_name in ("integer", "smallint"):
        k = value & M32
    else:
        raise ValueError(f"no client-side hash for {type_name}")
    a, b, c = (_A0 + k) & M32, _B0, _C0
    c ^= b; c = (c - (((b << 14) | (b >> 18)) & M32)) & M32
    a ^= c; a = (a - (((c << 11) | (c >> 21)) & M32)) & M32
    b ^= a; b = (b - (((a << 25) | (a >> 7)) & M32)) & M32
    c ^= b; c = (c - (((b << 16) | (b >> 16)) & M32)) & M32
    a ^= c; a = (a - (((c << 4) | (c >> 28)) & M32)) & M32
    b ^= a; b = (b - (((a << 14) | (a >> 18)) & M32)) & M32
    c ^= b; c = (c - (((b << 24) | (b >> 8)) & M32)) & M32
    return ((((b << 32) | c) + HASH_COMBINE_CONST) & M64) % modulus


def remainders(keys: Any, modulus: int, type_name: str = "bigint") -> Any:
    """Vectorised :func:`remainder` for a numpy int64 array (bulk loading): same arithmetic, per element."""
    import numpy as np

    k = np.asarray(keys, dtype=np.int64)
    u32 = np.uint32
    if type_name == "bigint":
        lo = (k & M32).astype(u32)
        hi = ((k >> 32) & M32).astype(u32)
        lo = lo ^ np.where(k >= 0, hi, ~hi)
    elif type_name in ("integer", "smallint"):
        lo = (k & M32).astype(u32)
    else:
        raise ValueError(f"no client-side hash for {type_name}")
    seed = HASH_PARTITION_SEED
    init = (0x9E3779B9 + 4 + 3923095) & M32
    a0, b0, c0 = _mix((init + (seed >> 32)) & M32, (init + (seed & M32)) & M32, init)
    with np.errstate(over="ignore"):
        a = (lo + u32(a0)).astype(u32)
        b = np.full_like(a, b0)
        c = np.full_like(a, c0)

        def rot(x: Any, n: int) -> Any:
            return (x << u32(n)) | (x >> u32(32 - n))

        c ^= b; c -= rot(b, 14)
        a ^= c; a -= rot(c, 11)
        b ^= a; b -= rot(a, 25)
        c ^= b; c -= rot(b, 16)
        a ^= c; a -= rot(c, 4)
        b ^= a; b -= rot(a, 14)
        c ^= b; c -= rot(b, 24)
        h = (b.astype(np.uint64) << np.uint64(32)) | c.astype(np.uint64)
        h = h + np.uint64(HASH_COMBINE_CONST)
    return (h % np.uint64(modulus)).astype(np.int64)
