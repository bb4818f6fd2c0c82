"""Transaction-control statements as the router sees them (pure: SQL text in, data out): BEGIN / START
TRANSACTION with their options, SET TRANSACTION, COMMIT / END, ROLLBACK / ABORT, SAVEPOINT, RELEASE,
ROLLBACK TO, and the two-phase commands a client might send itself. Options are kept as parsed values and
rendered from fixed keywords, never from the client's text."""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, replace

from pglast import ast, parse_sql
from pglast.enums import TransactionStmtKind, VariableSetKind
from pglast.parser import ParseError

ISOLATION_LEVELS = {"read uncommitted": "READ UNCOMMITTED", "read committed": "READ COMMITTED",
                    "repeatable read": "REPEATABLE READ", "serializable": "SERIALIZABLE"}


@dataclass(frozen=True)
class BeginOptions:
    """What BEGIN / START TRANSACTION / SET TRANSACTION asked for; None: the session's default."""

    isolation: str | None = None  # a key of ISOLATION_LEVELS
    read_only: bool | None = None
    deferrable: bool | None = None

    def merged(self, later: BeginOptions) -> BeginOptions:
        """These options with what a later SET TRANSACTION set."""
        return replace(self, **{k: v for k, v in vars(later).items() if v is not None})

    def modes(self) -> str:
        """The transaction modes as SQL (' ISOLATION LEVEL READ COMMITTED READ ONLY'), '' for none."""
        parts = []
        if self.isolation is not None:
            parts.append(f"ISOLATION LEVEL {ISOLATION_LEVELS[self.isolation]}")
        if self.read_only is not None:
            parts.append("READ ONLY" if self.read_only else "READ WRITE")
        if self.deferrable is not None:
            parts.append("DEFERRABLE" if self.deferrable else "NOT DEFERRABLE")
        return "".join(" " + part for part in parts)

    def begin(self) -> str:
        return "BEGIN" + self.modes()


class Kind(enum.Enum):
    BEGIN = "begin"
    SET_TRANSACTION = "set transaction"
    COMMIT = "commit"
    ROLLBACK = "rollback"
    SAVEPOINT = "savepoint"
    RELEASE = "release"
    ROLLBACK_TO = "rollback to"
    TWO_PHASE = "two-phase"  # PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED


@dataclass(frozen=True)
class Control:
    kind: Kind
    tag: str  # the command tag PostgreSQL answers with
    options: BeginOptions = BeginOptions()
    savepoint: str = ""
    chain: bool = False  # COMMIT / ROLLBACK AND CHAIN


# Cheap test before parsing: the first keyword (after comments) of a transaction-control statement.
_FIRST_WORD = re.compile(r"\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*"
                         r"(begin|start|commit|end|rollback|abort|savepoint|release|set|prepare)\b", re.I | re.S)

_KINDS = {
    TransactionStmtKind.TRANS_STMT_BEGIN: (Kind.BEGIN, "BEGIN"),
    TransactionStmtKind.TRANS_STMT_START: (Kind.BEGIN, "START TRANSACTION"),
    TransactionStmtKind.TRANS_STMT_COMMIT: (Kind.COMMIT, "COMMIT"),
    TransactionStmtKind.TRANS_STMT_ROLLBACK: (Kind.ROLLBACK, "ROLLBACK"),
    TransactionStmtKind.TRANS_STMT_SAVEPOINT: (Kind.SAVEPOINT, "SAVEPOINT"),
    TransactionStmtKind.TRANS_STMT_RELEASE: (Kind.RELEASE, "RELEASE"),
    TransactionStmtKind.TRANS_STMT_ROLLBACK_TO: (Kind.ROLLBACK_TO, "ROLLBACK"),
    TransactionStmtKind.TRANS_STMT_PREPARE: (Kind.TWO_PHASE, "PREPARE TRANSACTION"),
    TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED: (Kind.TWO_PHASE, "COMMIT PREPARED"),
    TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED: (Kind.TWO_PHASE, "ROLLBACK PREPARED"),
}


def control(sql: str) -> Control | None:
    """The statement when ``sql`` is exactly one transaction-control statement, else None (several
    statements, another statement, or a syntax error: the server reports those)."""
    return _control(sql) if _FIRST_WORD.match(sql) else None  # other statements take no cache entry


@functools.lru_cache(maxsize=512)
def _control(sql: str) -> Control | None:
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return None
    if len(stmts) != 1:
        return None
    stmt = stmts[0].stmt
    if isinstance(stmt, ast.VariableSetStmt):
        if stmt.kind is VariableSetKind.VAR_SET_MULTI and stmt.name == "TRANSACTION":
            return Control(Kind.SET_TRANSACTION, "SET", options=_options(stmt.args))
        return None
    if not isinstance(stmt, ast.TransactionStmt) or stmt.kind is None:
        return None
    kind, tag = _KINDS[stmt.kind]
    return Control(kind, tag, options=_options(stmt.options), savepoint=stmt.savepoint_name or "",
                   chain=bool(stmt.chain))


def _options(items: tuple[ast.Node, ...] | None) -> BeginOptions:
    isolation: str | None = None
    read_only: bool | None = None
    deferrable: bool | None = None
    for item in items or ():
        if not isinstance(item, ast.DefElem) or not isinstance(item.arg, ast.A_Const):
            continue
        value = item.arg.val
        if item.defname == "transaction_isolation" and isinstance(value, ast.String):
            if value.sval in ISOLATION_LEVELS:
                isolation = value.sval
        elif item.defname == "transaction_read_only" and isinstance(value, ast.Integer):
            read_only = bool(value.ival)
        elif item.defname == "transaction_deferrable" and isinstance(value, ast.Integer):
            deferrable = bool(value.ival)
    return BeginOptions(isolation, read_only, deferrable)



@functools.lru_cache(maxsize=1024)
def reads_only(sql: str) -> bool:
    """Whether a (routed) statement is one plain SELECT: no FOR UPDATE/SHARE, no WITH, no INTO. Such a
    statement leaves nothing on its worker that a later statement elsewhere could contradict."""
    try:
        stmts = parse_sql(sql)
    except ParseError:
        return False
    if len(stmts) != 1 or not isinstance(stmts[0].stmt, ast.SelectStmt):
        return False
    select = stmts[0].stmt
    return not (select.lockingClause or select.withClause or select.intoClause or select.larg or select.rarg)
