"""A topology file checked against the workers before import applies anything.

Every shard table must exist on its node with the columns and types the file gives (and, for a reference
table that exists on the coordinator, the coordinator's), and the shards must cover the key space
(plan/coverage.py). A mismatch is one TopologyError naming the table, shard, node and what differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import psycopg
from psycopg import sql

from ..errors import TopologyError
from ..execute.connect import Conn, Endpoint, connect
from ..plan.coverage import HINT, check_coverage
from ..topology.model import Shard, TableDef

_SHARD_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
"""


def _columns_text(cols: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{n} {t}" for n, t in cols)


def _difference(have: Sequence[tuple[str, str]], want: Sequence[tuple[str, str]]) -> str:
    """What differs, said about ``have`` relative to ``want``."""
    if [n for n, _ in have] == [n for n, _ in want]:
        for (n, t), (_, wt) in zip(have, want, strict=True):
            if t != wt:
                return f"column {n} is {t}"
    return f"columns are ({_columns_text(have)})"


def check_against_workers(tdef: TableDef, method: str, shards: Sequence[Shard],
                          endpoint_of: Callable[[str], Endpoint], coordinator: TableDef | None) -> None:
    """TopologyError unless every shard table matches the file (and the coordinator's table, if given)."""
    name = tdef.name
    check_coverage(name, method, shards)
    want = [(c.name, c.type) for c in tdef.columns]
    if coordinator is not None:
        have = [(c.name, c.type) for c in coordinator.columns]
        if have != want:
            raise TopologyError(f"import of {name}: on the coordinator its {_difference(have, want)}, the topology "
                                f"file says ({_columns_text(want)})", hint=HINT)
    conns: dict[str, Conn] = {}
    try:
        for shard in shards:
            if shard.node not in conns:
                conns[shard.node] = connect(endpoint_of(shard.node))
            conn = conns[shard.node]
            target = sql.Identifier(shard.shard_schema, shard.shard_table).as_string(conn)
            try:
                have = [(str(r[0]), str(r[1])) for r in conn.execute(_SHARD_COLUMNS, (target,)).fetchall()]
            except psycopg.Error as exc:
                raise TopologyError(f"import of {name}: cannot read shard {target} on node {shard.node}: "
                                    f"{exc.diag.message_primary or exc}", hint=HINT) from None
            if not have:
                raise TopologyError(f"import of {name}: shard table {target} (shard {shard.shard_id}) does not exist "
                                    f"on node {shard.node}", hint=HINT)
            if have != want:
                raise TopologyError(f"import of {name}: on node {shard.node} shard {target} differs: its "
                                    f"{_difference(have, want)}, the topology file says ({_columns_text(want)})",
                                    hint=HINT)
    finally:
        for c in conns.values():
            c.close()
