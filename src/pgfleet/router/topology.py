"""Build the router's :class:`RoutingTopology` from the coordinator's catalog (reads only).

The distributed and reference tables come from :func:`pgfleet.topology.read.read_topology`; this adds
what routing needs on top: each table's columns and key type, whether it has row-level security, the
fingerprint of the coordinator's roles and privileges, and the names of every relation a
statement could name, so that name resolution through search_path sees what PostgreSQL sees."""

from __future__ import annotations

from dataclasses import fields

from ..execute.connect import Conn
from ..topology.read import read_topology
from .snapshot import RoutedTable, RoutingTopology

_COLUMNS = """
SELECT a.attrelid::bigint, a.attname, format_type(a.atttypid, NULL), a.attnum, a.attcollation NOT IN (0, 100),
       a.attidentity = 'a', a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE '%%nextval(%%'
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY(%s::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_ROW_SECURITY = "SELECT oid::bigint FROM pg_class WHERE oid = ANY(%s::oid[]) AND relrowsecurity"

# Reference tables that a statement can write as it writes the coordinator's table: nothing else fires,
# and the catalog's trigger knows pgfleet.copies_written (a catalog installed before it would queue the rows
# as well: they would reach the copies twice).
_STATEMENT_COPIES = """
SELECT c.oid::bigint FROM pg_class c
WHERE c.oid = ANY(%s::oid[])
  AND EXISTS (SELECT FROM pg_proc p WHERE p.oid = 'pgfleet.reference_replicate()'::regprocedure
              AND p.prosrc LIKE '%%pgfleet.copies_written%%')
  AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                  AND t.tgfoid <> 'pgfleet.reference_replicate()'::regprocedure)
  AND NOT EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = c.oid)
  AND NOT EXISTS (SELECT FROM pg_constraint f WHERE f.contype = 'f' AND f.confrelid = c.oid)
"""

# Reference tables whose writes' queued statements the router may apply to the copies inside its transaction
# (router/refcopies.py): nothing but pgfleet's trigger fires, no rule, and the queue keeps each statement's rows.
_QUEUED_COPIES = """
SELECT c.oid::bigint FROM pg_class c
WHERE c.oid = ANY(%s::oid[])
  AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = 'pgfleet.ddl_queue'::regclass AND a.attname = 'rows'
              AND NOT a.attisdropped)
  AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                  AND t.tgfoid <> 'pgfleet.reference_replicate()'::regprocedure)
  AND NOT EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = c.oid)
"""

# The sequence each distributed table's key draws from when an INSERT does not give it (router/keyfill.py): an
# identity column's, or a serial's (the sequence the column owns); the identity kind, and the sequence's schema and name.
_KEY_SEQUENCES = """
SELECT q.oid, q.identity, q.seq, sn.nspname::text, sc.relname::text
FROM (SELECT t.oid::bigint AS oid, a.attidentity::text AS identity,
             pg_get_serial_sequence(format('%%I.%%I', n.nspname, c.relname), a.attname)::regclass::oid AS seq
      FROM unnest(%s::oid[], %s::text[]) AS t(oid, key)
      JOIN pg_class c ON c.oid = t.oid JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = t.key AND NOT a.attisdropped
                             AND a.attgenerated = '') AS q
JOIN pg_class sc ON sc.oid = q.seq JOIN pg_namespace sn ON sn.oid = sc.relnamespace
"""

_NO_SEQUENCE: tuple[str, int, tuple[str, str]] = ("", 0, ("", ""))

# The coordinator's own tables that a router transaction may write there (router/refpart.py): plain tables
# of the user's, on which nothing but PostgreSQL's internal triggers fires.
_LOCAL_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND NOT c.relispartition AND c.oid <> ALL(%s::oid[])
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pgfleet') AND n.nspname NOT LIKE 'pg\\_%%'
  AND NOT EXISTS (SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal)
  AND NOT EXISTS (SELECT FROM pg_rewrite r WHERE r.ev_class = c.oid)
"""

# Everything FROM can name: tables, views, materialized views, foreign and partitioned tables, sequences.
_RELATIONS = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
  AND n.nspname NOT LIKE 'pg\\_toast%%'
"""


def load_routing_topology(conn: Conn) -> RoutingTopology:
    topo = read_topology(conn)
    oids = [t.oid for t in topo.tables]
    columns: dict[int, list[tuple[str, str, int]]] = {}
    collated: dict[int, list[str]] = {}  # columns whose collation is not the database default
    always: dict[int, list[str]] = {}  # identity columns GENERATED ALWAYS
    drawn: dict[int, list[str]] = {}  # columns whose default draws from a sequence (the shards have no such default)
    for oid, name, type_name, attnum, other_collation, identity_always, sequence_default in conn.execute(
            _COLUMNS, (oids,)).fetchall():
        columns.setdefault(int(oid), []).append((str(name), str(type_name), int(attnum)))
        for found, names in ((other_collation, collated), (identity_always, always), (sequence_default, drawn)):
            if found:
                names.setdefault(int(oid), []).append(str(name))
    tables = []
    secured = {int(r[0]) for r in conn.execute(_ROW_SECURITY, (oids,)).fetchall()}
    references = [t.oid for t in topo.tables if t.method == "reference"]
    plain = {int(r[0]) for r in conn.execute(_STATEMENT_COPIES, (references,)).fetchall()} if references else set()
    queued = {int(r[0]) for r in conn.execute(_QUEUED_COPIES, (references,)).fetchall()} if references else set()
    distributed = [t for t in topo.tables if t.method != "reference" and t.key]
    sequences = {int(r[0]): (str(r[1]), int(r[2]), (str(r[3]), str(r[4]))) for r in conn.execute(
        _KEY_SEQUENCES, ([t.oid for t in distributed], [t.key for t in distributed])).fetchall()
        if r[2] is not None} if distributed else {}
    for t in topo.tables:
        cols = columns.get(t.oid, [])
        key_type = next((typ for name, typ, _ in cols if name == t.key), "")
        catalog = {f.name: getattr(t, f.name) for f in fields(t)}
        tables.append(RoutedTable(**catalog, key_type=key_type, columns=tuple(n for n, _, _ in cols),
                                  attnums=tuple(a for _, _, a in cols), row_security=t.oid in secured,
                                  collated=tuple(collated.get(t.oid, ())), always=tuple(always.get(t.oid, ())),
                                  drawn=tuple(drawn.get(t.oid, ())),
                                  statement_copies=t.oid in plain,
                                  queued_copies=t.oid in queued, key_identity=sequences.get(t.oid, _NO_SEQUENCE)[0],
                                  key_sequence=sequences.get(t.oid, _NO_SEQUENCE)[1],
                                  key_sequence_name=sequences.get(t.oid, _NO_SEQUENCE)[2]))
    relations = frozenset((str(r[0]), str(r[1])) for r in conn.execute(_RELATIONS).fetchall())
    local = frozenset((str(r[0]), str(r[1])) for r in conn.execute(_LOCAL_TABLES, (oids,)).fetchall())
    row = conn.execute("SELECT pgfleet.roles_fingerprint()").fetchone()
    builtin = _builtin_functions(conn)
    return RoutingTopology(tables=tuple(tables), relations=relations, local_tables=local,
                           roles_fingerprint=str(row[0]) if row else "", builtin_functions=builtin,
                           coordinator=topo.coordinator.name if topo.coordinator is not None else "")


_BUILTINS: dict[int, frozenset[str]] = {}  # by server version: pg_catalog's functions do not change


def _builtin_functions(conn: Conn) -> frozenset[str]:
    """The names of pg_catalog's functions (read once per server version and process)."""
    version = conn.info.server_version
    if version not in _BUILTINS:
        rows = conn.execute("SELECT DISTINCT proname::text FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace")
        _BUILTINS[version] = frozenset(str(r[0]) for r in rows.fetchall())
    return _BUILTINS[version]
