"""What the router's analysis knows of the cluster: a frozen snapshot of the distributed and reference
tables (method, key, key type, columns, shards with bounds and placements, co-location group) and the
names of every other relation that name resolution can meet. Built by :mod:`.topology` from the
catalog; pure data here, so routing decisions are tested without servers."""

from __future__ import annotations

import functools

from dataclasses import dataclass, field

from ..topology.model import DistTable, Shard

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
TEXT_TYPES = frozenset({"text", "character varying", "character"})


@dataclass(frozen=True)
class RoutedTable(DistTable):
    """A distributed or reference table as routing sees it: the catalog's snapshot, its key type and columns."""

    key_type: str = ""  # format_type of the key without typmod ('' for reference tables)
    columns: tuple[str, ...] = ()  # in table order
    attnums: tuple[int, ...] = ()  # the coordinator's attribute number of each column (dropped columns leave gaps)
    row_security: bool = False  # relrowsecurity: its policies are the coordinator's, so it is never routed
    collated: tuple[str, ...] = ()  # columns with a collation other than the database default
    always: tuple[str, ...] = ()  # identity columns GENERATED ALWAYS (a value needs OVERRIDING SYSTEM VALUE)
    drawn: tuple[str, ...] = ()  # columns whose default draws from a sequence: the shards have no such default
    # a reference table whose writes may run as the same statement on every copy (router/refcopies.py): no
    # trigger but pgfleet's, no rule, no foreign key that refers to it
    statement_copies: bool = False
    # a reference table whose writes' queued statements the router may apply to the copies in its transaction
    # (router/refcopies.py): no trigger but pgfleet's, no rule
    queued_copies: bool = False
    # the sequence the distribution key's default draws from (an identity column's, a serial's; 0: none) and
    # the identity kind ('a' ALWAYS, 'd' BY DEFAULT, '' a serial): router/keyfill.py
    key_sequence: int = 0
    key_identity: str = ""
    key_sequence_name: tuple[str, str] = ("", "")  # its schema and name (router/seqstate.py)

    @property
    def schema(self) -> str:
        return self.name.schema or "public"

    @property
    def relname(self) -> str:
        return self.name.name

    @property
    def is_reference(self) -> bool:
        return self.method == "reference"

    def shard(self, index: int) -> Shard | None:
        return next((s for s in self.shards if s.index == index), None)

    @functools.cached_property
    def hash_placement(self) -> tuple[int, dict[int, int]] | None:
        """A hash table whose shards share one modulus (every table distribute makes): the modulus and the
        shard index of each remainder, so that a key's shard is one hash and one lookup; None otherwise."""
        moduli = {s.modulus for s in self.shards}
        modulus = moduli.pop() if len(moduli) == 1 else None
        if self.method != "hash" or not modulus or any(s.remainder is None for s in self.shards):
            return None
        return modulus, {int(s.remainder or 0): s.index for s in self.shards}


@dataclass(frozen=True)
class RoutingTopology:
    tables: tuple[RoutedTable, ...]
    relations: frozenset[tuple[str, str]] = field(default=frozenset())  # every (schema, name) on the coordinator
    # the coordinator's plain tables without triggers or rules of their own (not distributed or reference)
    local_tables: frozenset[tuple[str, str]] = field(default=frozenset())
    roles_fingerprint: str = ""  # pgfleet.roles_fingerprint(): the coordinator's roles, memberships, privileges
    coordinator: str = ""  # the coordinator's node name (a login for it: Routing.login), '' when unknown
    builtin_functions: frozenset[str] = field(default=frozenset())  # names of pg_catalog's functions

    def table(self, schema: str, name: str) -> RoutedTable | None:
        return next((t for t in self.tables if t.schema == schema and t.relname == name), None)

    def exists(self, schema: str, name: str) -> bool:
        return (schema, name) in self.relations or self.table(schema, name) is not None

    def schema_of(self, schema: str | None, name: str, search_path: tuple[str, ...]) -> str | None:
        """The schema where the coordinator finds relation ``name``: ``schema`` when given, else the first of
        ``search_path`` (pg_catalog first unless it is listed) that has it; temporary schemas are not
        searched. None: no such relation."""
        schemas = (schema,) if schema else (search_path if "pg_catalog" in search_path else ("pg_catalog", *search_path))
        return next((s for s in schemas if s != "pg_temp" and not s.startswith("pg_temp_") and self.exists(s, name)),
                    None)
