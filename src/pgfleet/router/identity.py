"""What a routed write must not leave to a shard: the shards hold values the coordinator computed, so their
columns have no sequence defaults and no identities (:mod:`pgfleet.plan.tables`). An INSERT that leaves a
column to its sequence, or gives a value to a ``GENERATED ALWAYS`` identity without ``OVERRIDING SYSTEM
VALUE``, and an UPDATE of such an identity, are not routed: the coordinator runs them (drawing the value, or
refusing as one server does). The distribution key's own default is drawn by :mod:`.keyfill` before this."""

from __future__ import annotations

from collections.abc import Sequence

from pglast import ast, enums

from .snapshot import RoutedTable


def insert_refusal(table: RoutedTable, columns: Sequence[str], rows: Sequence[Sequence[ast.Node]],
                   override: enums.OverridingKind | None) -> str | None:
    """Why an INSERT of ``rows`` (VALUES lists) into ``columns`` of ``table`` cannot go to a shard, or None."""
    given_always = [c for c in columns if c in table.always or (c == table.key and table.key_identity == "a")]
    if given_always and override != enums.OverridingKind.OVERRIDING_SYSTEM_VALUE:
        return (f"a value for {given_always[0]}, an identity column GENERATED ALWAYS, without OVERRIDING SYSTEM "
                "VALUE (the coordinator refuses it)")
    for column in table.drawn:
        if column == table.key:
            continue
        at = columns.index(column) if column in columns else -1
        if at < 0 or any(at < len(row) and isinstance(row[at], ast.SetToDefault) for row in rows):
            return f"INSERT that leaves {column} to its sequence (the coordinator draws it)"
    return None


def update_refusal(table: RoutedTable, targets: Sequence[ast.ResTarget]) -> str | None:
    """Why an UPDATE that sets ``targets`` of ``table`` cannot go to a shard, or None."""
    for res in targets:
        if res.name in table.always and not isinstance(res.val, ast.SetToDefault):
            return f"UPDATE of {res.name}, an identity column GENERATED ALWAYS (the coordinator allows only DEFAULT)"
        if res.name in table.drawn and isinstance(res.val, ast.SetToDefault):
            return f"UPDATE of {res.name} to DEFAULT, its sequence's next value (the coordinator draws it)"
    return None
