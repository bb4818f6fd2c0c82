"""The client-side hash agrees with the server's, key by key."""

import random

import pytest

from pgfleet import hashing
from pgfleet.cluster.fleet import Fleet


@pytest.mark.parametrize(("type_name", "fn"), [("bigint", "hashint8extended"), ("integer", "hashint4extended")])
def test_extended_hash_matches_server(fleet: Fleet, type_name: str, fn: str) -> None:
    rng = random.Random(7)
    bound = 2**63 if type_name == "bigint" else 2**31
    keys = [0, 1, -1, bound - 1, -bound] + [rng.randrange(-bound, bound) for _ in range(3000)]
    seeds = [0, hashing.HASH_PARTITION_SEED, 42]
    for seed in seeds:
        rows = fleet.conn().execute(
            f"SELECT k, {fn}(k::{type_name}, %s) FROM unnest(%s::bigint[]) k",
            (seed - 2**64 if seed >= 2**63 else seed, keys)).fetchall()
        for k, h in rows:
            py = hashing.hashint8extended(k, seed) if type_name == "bigint" else hashing.hashint4extended(k, seed)
            assert py == h & hashing.M64, (k, seed)


def test_remainder_matches_partition_routing(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE hp (k bigint) PARTITION BY HASH (k)")
    keys = [*list(range(-2000, 2000)), 2 ** 62 + 17, -2 ** 62 - 3]
    for modulus in (7, 8, 128):
        rows = conn.execute(
            "SELECT k, r FROM unnest(%s::bigint[]) k, generate_series(0, %s - 1) r "
            "WHERE satisfies_hash_partition('hp'::regclass, %s, r, k)", (keys, modulus, modulus)).fetchall()
        assert len(rows) == len(keys)
        for k, r in rows:
            assert hashing.remainder(k, modulus) == r
