"""Foreign keys of distributed tables on their shards (sql/foreign_keys.sql has the rules and says why):
the checks and statements are the catalog's, so the CLI, the SQL API and pgfleet.add_foreign_key()
refuse and build them with the same words."""

from __future__ import annotations

import psycopg

from ..errors import SpecError
from ..execute.connect import Conn

ForeignKey = tuple[object, ...]  # a pgfleet.foreign_keys row: relid, name, columns, ref_relid, ref_columns, actions, deferral


def _refused(exc: psycopg.Error) -> SpecError:
    return SpecError(exc.diag.message_primary or str(exc), hint=exc.diag.message_hint)


def check_foreign_keys(conn: Conn, oid: int, key: str, colocation_id: int | None) -> list[ForeignKey]:
    """The foreign keys of plain table ``oid``, once each is known to be enforceable shard by shard when
    the table is distributed by ``key`` in co-location group ``colocation_id`` (None: a new one)."""
    rows = [tuple(r) for r in conn.execute("SELECT * FROM pgfleet.foreign_keys_of(%s)", (oid,)).fetchall()]
    try:
        with conn.transaction():
            conn.execute("SELECT pgfleet.check_foreign_key(%s, %s, %s, f) FROM pgfleet.foreign_keys_of(%s) f",
                         (oid, key, colocation_id, oid))
    except psycopg.Error as exc:
        raise _refused(exc) from None
    return rows


def enforce_foreign_keys(conn: Conn, new_oid: int, keys: list[ForeignKey]) -> None:
    """Record ``keys`` for distributed table ``new_oid`` and queue them for its shards (applied at COMMIT)."""
    for fk in keys:
        conn.execute("SELECT pgfleet.enforce_foreign_key(ROW(%s, %s, %s::text[], %s, %s::text[], %s, %s, %s)::pgfleet.foreign_keys)",
                     (new_oid, *fk[1:]))


def check_not_referenced(conn: Conn, oid: int) -> None:
    try:
        with conn.transaction():
            conn.execute("SELECT pgfleet.check_not_referenced(%s)", (oid,))
    except psycopg.Error as exc:
        raise _refused(exc) from None
