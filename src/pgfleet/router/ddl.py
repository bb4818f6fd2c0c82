"""DDL of distributed tables that PostgreSQL refuses on the coordinator, run by the router as pgfleet's
SQL API: ``ALTER TABLE t ADD [CONSTRAINT n] FOREIGN KEY (…) REFERENCES r [(…)] [ON DELETE/UPDATE …]``
becomes ``pgfleet.add_foreign_key(…)`` (the coordinator's parent cannot hold it — its partitions are
foreign tables — so it is enforced shard by shard, sql/foreign_keys.sql), run on the client's own
coordinator connection: same role, same search_path, same checks and errors as the SQL API, and the
client gets ``ALTER TABLE``. ORMs and migration tools declare their foreign keys that way."""

from __future__ import annotations

from dataclasses import dataclass

from pglast import ast, enums
from psycopg import sql

from . import protocol as p
from . import wire
from .multishard import MultiShardHost
from .routes import MultiShard
from .snapshot import RoutingTopology
from .vacuum import resolve_table

ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}


@dataclass(frozen=True)
class CoordinatorCall(MultiShard):
    """One statement of pgfleet's SQL API on the client's coordinator connection, answered with ``tag``."""

    statement: str
    tag: str
    description = "DDL"

    async def run(self, host: MultiShardHost) -> bytes | None:
        reply = await host.coordinator(self.statement)
        out: list[bytes] = []
        for type_byte, payload in reply:
            if type_byte in (b"T", b"D"):
                continue  # the function's void result
            out.append(p.CommandComplete(self.tag).encode() if type_byte == b"C" else wire.frame(type_byte, payload))
        return b"".join(out)


def adds_foreign_keys(stmt: ast.Node | None) -> bool:
    """An ALTER TABLE that only adds foreign keys: it changes no session state and nothing routing knows."""
    return isinstance(stmt, ast.AlterTableStmt) and bool(stmt.cmds) and all(
        isinstance(c, ast.AlterTableCmd) and c.subtype == enums.AlterTableType.AT_AddConstraint
        and isinstance(c.def_, ast.Constraint) and c.def_.contype == enums.ConstrType.CONSTR_FOREIGN
        for c in stmt.cmds or ())


def _name(node: ast.RangeVar) -> sql.Composable:
    return sql.Identifier(*(n for n in (node.catalogname, node.schemaname, node.relname) if n))


def planner(stmt: ast.Node, text: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> CoordinatorCall | None:
    """``ALTER TABLE dist ADD FOREIGN KEY …`` (one command, a plain foreign key) as the SQL API call."""
    if not isinstance(stmt, ast.AlterTableStmt) or stmt.objtype != enums.ObjectType.OBJECT_TABLE \
            or stmt.relation is None or not stmt.relation.inh or len(stmt.cmds or ()) != 1:
        return None
    cmd = stmt.cmds[0]  # type: ignore[index]
    constraint = cmd.def_ if isinstance(cmd, ast.AlterTableCmd) else None
    if cmd.subtype != enums.AlterTableType.AT_AddConstraint or not isinstance(constraint, ast.Constraint) \
            or constraint.contype != enums.ConstrType.CONSTR_FOREIGN:
        return None
    table = resolve_table(stmt.relation, topology, search_path)
    if table is None or table.is_reference or constraint.pktable is None:
        return None  # plain and reference tables hold their foreign keys on the coordinator
    if constraint.skip_validation or not constraint.is_enforced \
            or constraint.fk_matchtype != "s" or constraint.fk_del_set_cols \
            or constraint.fk_upd_action not in ACTIONS or constraint.fk_del_action not in ACTIONS:
        return None  # options the shards' keys do not carry: the coordinator says what it says
    columns = [str(c.sval) for c in constraint.fk_attrs or () if isinstance(c, ast.String)]
    ref_columns = [str(c.sval) for c in constraint.pk_attrs or () if isinstance(c, ast.String)]
    deferral = ("NOT DEFERRABLE" if not constraint.deferrable and not constraint.initdeferred else
                "DEFERRABLE INITIALLY DEFERRED" if constraint.initdeferred else "DEFERRABLE INITIALLY IMMEDIATE")
    call = sql.SQL("SELECT pgfleet.add_foreign_key({}::regclass, {}, {}::text[], {}::regclass, {}::text[], {}, {}, {})").format(
        sql.Literal(_name(stmt.relation).as_string()), sql.Literal(constraint.conname), sql.Literal(columns),
        sql.Literal(_name(constraint.pktable).as_string()), sql.Literal(ref_columns or None),
        sql.Literal(ACTIONS[constraint.fk_del_action]), sql.Literal(ACTIONS[constraint.fk_upd_action]), sql.Literal(deferral))
    return CoordinatorCall(call.as_string(), "ALTER TABLE")
