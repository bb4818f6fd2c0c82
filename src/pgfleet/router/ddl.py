"""Foreign keys of distributed tables declared with plain DDL through the router.

PostgreSQL refuses ``ALTER TABLE t ADD FOREIGN KEY …`` on the coordinator when ``t`` is distributed (its
partitions are foreign tables), before any event trigger runs. So the router rewrites a simple Query
that declares one, whatever the session's state (autocommit, a transaction, a session pinned to the
coordinator — ORMs' migrations run in transactions), into pgfleet's SQL API on the coordinator:

* ``ALTER TABLE t ADD [CONSTRAINT n] FOREIGN KEY (…) REFERENCES r [(…)] [ON DELETE/UPDATE …]
  [DEFERRABLE …]`` → ``SELECT pgfleet.add_foreign_key(…)`` (enforced shard by shard,
  sql/foreign_keys.sql: same role, search_path, checks and errors as the SQL API);
* ``ALTER TABLE t ADD COLUMN c … [CONSTRAINT n] REFERENCES r (…) …`` (Django's AddField) → the ALTER
  TABLE without the key, then the call;
* ``SET CONSTRAINTS n IMMEDIATE`` naming only keys rewritten in the same Query (Django sends it after
  its AddField) → not sent: the shards get the key at COMMIT;
* ``ALTER TABLE t ADD [CONSTRAINT n] UNIQUE | PRIMARY KEY (…) [DEFERRABLE …]`` (Django's AddConstraint
  and ``unique_together``) → ``SELECT pgfleet.add_unique_constraint(…)`` (on every shard,
  sql/unique_keys.sql; PostgreSQL refuses a unique index over foreign partitions);
* ``ALTER TABLE t DROP CONSTRAINT [IF EXISTS] n [CASCADE]`` → ``pgfleet.drop_constraint(…)``: a key only
  the shards hold goes with ``drop_foreign_key`` or ``drop_unique_constraint``, any other constraint as the
  statement says (run with the caller's rights).

The client gets the replies of the statements it sent (``ALTER TABLE``, ``SET CONSTRAINTS``):
:class:`ReplyRewriter` reshapes the coordinator's reply. Everything else passes untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pglast import ast, enums, parse_sql
from pglast.parser import ParseError
from pglast.stream import RawStream
from psycopg import sql

from . import protocol as p
from . import wire
from .snapshot import RoutingTopology
from .vacuum import resolve_table

ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
MAYBE = re.compile(rb"(?i)references|drop\s+constraint|unique|primary\s+key")  # the cheap test before any parsing
_UNIQUE = (enums.ConstrType.CONSTR_UNIQUE, enums.ConstrType.CONSTR_PRIMARY)

PASS, DROP = None, ""


@dataclass(frozen=True)
class Run:
    """One statement sent: its reply passes (``tag`` None), is dropped whole (``""``), or becomes just
    CommandComplete ``tag`` (its rows dropped)."""

    tag: str | None


@dataclass(frozen=True)
class Say:
    """A statement not sent: the client gets CommandComplete ``tag`` in its place."""

    tag: str


@dataclass(frozen=True)
class Translation:
    sql: str
    steps: tuple[Run | Say, ...]


def adds_foreign_keys(stmt: ast.Node | None) -> bool:
    """An ALTER TABLE that only adds foreign keys, primary keys or unique constraints: it changes no session
    state and nothing routing knows."""
    return isinstance(stmt, ast.AlterTableStmt) and bool(stmt.cmds) and all(
        isinstance(c, ast.AlterTableCmd) and c.subtype == enums.AlterTableType.AT_AddConstraint
        and isinstance(c.def_, ast.Constraint) and c.def_.contype in (enums.ConstrType.CONSTR_FOREIGN, *_UNIQUE)
        for c in stmt.cmds or ())


def translate(text: str, topology: RoutingTopology, search_path: tuple[str, ...]) -> Translation | None:
    """The Query ``text`` with its foreign keys of distributed tables made SQL API calls; None when it
    declares none (or cannot be parsed: the coordinator says why)."""
    try:
        statements = parse_sql(text)
    except ParseError:
        return None
    pieces: list[str] = []
    steps: list[Run | Say] = []
    declared: set[str] = set()
    for raw in statements:
        start = raw.stmt_location or 0
        end = start + raw.stmt_len if raw.stmt_len else len(text)
        original = text[start:end]
        stmt = raw.stmt
        calls = _foreign_keys(stmt, topology, search_path) if isinstance(stmt, ast.AlterTableStmt) else None
        if calls is not None:
            rest, keys = calls
            if rest is not None:
                pieces.append(rest)
                steps.append(Run(PASS))
            for i, (name, call) in enumerate(keys):
                pieces.append(call)
                steps.append(Run("ALTER TABLE" if rest is None and i == 0 else DROP))
                if name:
                    declared.add(name)
        elif isinstance(stmt, ast.ConstraintsSetStmt) and stmt.constraints and declared and all(
                isinstance(c, ast.RangeVar) and not c.schemaname and c.relname in declared for c in stmt.constraints):
            steps.append(Say("SET CONSTRAINTS"))
        else:
            pieces.append(original)
            steps.append(Run(PASS))
    if not declared and all(isinstance(s, Run) and s.tag is PASS for s in steps):
        return None
    return Translation(";\n".join(pieces), tuple(steps))


def _foreign_keys(stmt: ast.AlterTableStmt, topology: RoutingTopology, search_path: tuple[str, ...],
                  ) -> tuple[str | None, list[tuple[str | None, str]]] | None:
    """(the ALTER TABLE without its foreign keys, or None when nothing is left; the keys as calls), or
    None when the statement is not one to rewrite."""
    if stmt.objtype != enums.ObjectType.OBJECT_TABLE or stmt.relation is None or not stmt.relation.inh:
        return None
    table = resolve_table(stmt.relation, topology, search_path)
    if table is None or table.is_reference:
        return None  # plain and reference tables hold their foreign keys on the coordinator
    keys: list[tuple[str | None, str]] = []
    kept: list[ast.AlterTableCmd] = []
    commands = tuple(stmt.cmds or ())
    if len(commands) == 1 and isinstance(drop := commands[0], ast.AlterTableCmd) \
            and drop.subtype == enums.AlterTableType.AT_DropConstraint and drop.name:
        return None, [(None, sql.SQL("SELECT pgfleet.drop_constraint({}::regclass, {}, {}, {})").format(
            sql.Literal(_name(stmt.relation)), sql.Literal(drop.name), sql.Literal(bool(drop.missing_ok)),
            sql.Literal(drop.behavior == enums.DropBehavior.DROP_CASCADE)).as_string())]
    for cmd in stmt.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            return None
        if cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
                and cmd.def_.contype == enums.ConstrType.CONSTR_FOREIGN:
            columns = [str(c.sval) for c in cmd.def_.fk_attrs or () if isinstance(c, ast.String)]
            call = _call(stmt.relation, cmd.def_, columns, bool(cmd.def_.deferrable), bool(cmd.def_.initdeferred))
            if call is None:
                return None
            keys.append((cmd.def_.conname, call))
        elif cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
                and cmd.def_.contype in _UNIQUE:
            call = _unique_call(stmt.relation, cmd.def_)
            if call is None:
                return None
            keys.append((cmd.def_.conname, call))
        elif cmd.subtype == enums.AlterTableType.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef) \
                and any(isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN
                        for c in cmd.def_.constraints or ()):
            found = _column_key(stmt.relation, cmd.def_)
            if found is None:
                return None
            column, key = found
            keys.append(key)
            kept.append(ast.AlterTableCmd(subtype=cmd.subtype, def_=column, behavior=cmd.behavior,
                                          missing_ok=cmd.missing_ok))
        else:
            kept.append(cmd)
    if not keys:
        return None
    if not kept:
        return None, keys
    rest = ast.AlterTableStmt(relation=stmt.relation, cmds=tuple(kept), objtype=stmt.objtype, missing_ok=stmt.missing_ok)
    return RawStream()(rest), keys


def _column_key(relation: ast.RangeVar, column: ast.ColumnDef) -> tuple[ast.ColumnDef, tuple[str | None, str]] | None:
    """A new column's inline key (REFERENCES and the DEFERRABLE / INITIALLY attributes after it) as a call,
    and the column without it."""
    constraints = list(column.constraints or ())
    at = next(i for i, c in enumerate(constraints) if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN)
    key = constraints[at]
    attributes = {enums.ConstrType.CONSTR_ATTR_DEFERRABLE, enums.ConstrType.CONSTR_ATTR_NOT_DEFERRABLE,
                  enums.ConstrType.CONSTR_ATTR_DEFERRED, enums.ConstrType.CONSTR_ATTR_IMMEDIATE}
    end = at + 1
    while end < len(constraints) and constraints[end].contype in attributes:
        end += 1
    kinds = {c.contype for c in constraints[at + 1:end]}
    if any(isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN for c in constraints[end:]):
        return None  # two keys on one column: the coordinator answers
    call = _call(relation, key, [str(column.colname)], enums.ConstrType.CONSTR_ATTR_DEFERRABLE in kinds
                 or enums.ConstrType.CONSTR_ATTR_DEFERRED in kinds, enums.ConstrType.CONSTR_ATTR_DEFERRED in kinds)
    if call is None:
        return None
    bare = ast.ColumnDef(colname=column.colname, typeName=column.typeName, is_local=column.is_local,
                         constraints=tuple(constraints[:at] + constraints[end:]) or None, collClause=column.collClause)
    return bare, (key.conname, call)


def _call(relation: ast.RangeVar, key: ast.Constraint, columns: list[str], deferrable: bool, deferred: bool) -> str | None:
    if key.pktable is None or key.skip_validation or not key.is_enforced or key.fk_matchtype != "s" \
            or key.fk_del_set_cols or key.fk_upd_action not in ACTIONS or key.fk_del_action not in ACTIONS:
        return None  # options the shards' keys do not carry: the coordinator says what it says
    ref_columns = [str(c.sval) for c in key.pk_attrs or () if isinstance(c, ast.String)]
    deferral = ("DEFERRABLE INITIALLY DEFERRED" if deferred else
                "DEFERRABLE INITIALLY IMMEDIATE" if deferrable else "NOT DEFERRABLE")
    return sql.SQL("SELECT pgfleet.add_foreign_key({}::regclass, {}, {}::text[], {}::regclass, {}::text[], {}, {}, {})").format(
        sql.Literal(_name(relation)), sql.Literal(key.conname), sql.Literal(columns), sql.Literal(_name(key.pktable)),
        sql.Literal(ref_columns or None), sql.Literal(ACTIONS[key.fk_del_action]), sql.Literal(ACTIONS[key.fk_upd_action]),
        sql.Literal(deferral)).as_string()


def _unique_call(relation: ast.RangeVar, key: ast.Constraint) -> str | None:
    """``pgfleet.add_unique_constraint(…)`` for a UNIQUE or PRIMARY KEY constraint over plain columns; None for
    what the shards' constraint would not carry (USING INDEX, INCLUDE, WITH, a tablespace)."""
    columns = [str(c.sval) for c in key.keys or () if isinstance(c, ast.String)]
    if not columns or len(columns) != len(key.keys or ()) or key.indexname or key.including or key.options \
            or key.indexspace or key.skip_validation:
        return None
    deferral = ("DEFERRABLE INITIALLY DEFERRED" if key.initdeferred else
                "DEFERRABLE INITIALLY IMMEDIATE" if key.deferrable else "NOT DEFERRABLE")
    return sql.SQL("SELECT pgfleet.add_unique_constraint({}::regclass, {}, {}::text[], {}, {}, {})").format(
        sql.Literal(_name(relation)), sql.Literal(key.conname), sql.Literal(columns),
        sql.Literal(key.contype == enums.ConstrType.CONSTR_PRIMARY), sql.Literal(deferral),
        sql.Literal(bool(key.nulls_not_distinct))).as_string()


def _name(node: ast.RangeVar) -> str:
    return sql.Identifier(*(n for n in (node.catalogname, node.schemaname, node.relname) if n)).as_string()


def rewrite_query(raw: bytes, topology: RoutingTopology, search_path: tuple[str, ...]) -> tuple[bytes, ReplyRewriter] | None:
    """A Query message (``raw``) rewritten, and the rewriter of its reply; None: send it as it is."""
    if not MAYBE.search(raw):
        return None
    try:
        found = translate(raw[5:-1].decode(), topology, search_path)
    except UnicodeDecodeError:
        return None
    return None if found is None else (p.Query(found.sql).encode(), ReplyRewriter(found.steps))


class ReplyRewriter:
    """The coordinator's reply to a translated Query, reshaped into the reply to the Query the client sent."""

    def __init__(self, steps: tuple[Run | Say, ...]) -> None:
        self.framer = wire.Framer()
        self.steps = list(steps)
        self.failed = False
        self.done = False

    def _said(self) -> bytes:
        out = b""
        while self.steps and isinstance(self.steps[0], Say) and not self.failed:
            out += p.CommandComplete(self.steps.pop(0).tag or "").encode()
        return out

    def feed(self, data: bytes) -> bytes:
        """What the client gets of ``data``; after the ReadyForQuery, the rest passes and ``done`` is set."""
        out = [self._said()]
        messages = self.framer.feed(data)
        for i, (type_byte, payload) in enumerate(messages):
            step = self.steps[0] if self.steps and isinstance(self.steps[0], Run) else None
            if type_byte == b"Z":
                out += [self._said(), wire.frame(type_byte, payload)]
                out += [wire.frame(t, b) for t, b in messages[i + 1:]] + [self.framer.take_buffer()]
                self.done = True
                return b"".join(out)
            if type_byte == b"E":
                self.failed = True
            if step is not None and step.tag is not PASS and type_byte in (b"T", b"D", b"C"):
                if type_byte == b"C":
                    if step.tag is not None and step.tag:
                        out.append(p.CommandComplete(step.tag).encode())
                    self.steps.pop(0)
                    out.append(self._said())
                continue
            out.append(wire.frame(type_byte, payload))
            if type_byte == b"C" and step is not None:
                self.steps.pop(0)
                out.append(self._said())
        return b"".join(out)
