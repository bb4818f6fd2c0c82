"""``SET name = value`` / ``RESET name`` / ``RESET ALL`` of a session in autocommit, carried to its routed
statements instead of keeping the session on the coordinator (the rules pure; :class:`SessionSettings`, the
session's side). A simple Query, or an extended-protocol batch whose first message parses the unnamed
statement (JDBC's way; a named prepared SET still pins).

The statement still goes to the coordinator, whose session keeps it for what runs there; once the
coordinator accepted it, the session's worker connections are the pooled ones opened with that setting as a
startup parameter (``ClientSession._worker_settings``: the pool gives a session only connections of its
settings), so a routed statement runs under it as on one server. The settings PostgreSQL reports
(TimeZone, DateStyle, IntervalStyle, search_path) come from the coordinator's ParameterStatus instead.

Not carried (the session stays on the coordinator, as before): SET ROLE and SESSION AUTHORIZATION, client
encoding and standard_conforming_strings (the router reads statements in UTF-8 with standard strings), the
transaction settings (the router's transactions reason about their isolation), ``extra_float_digits`` (the
router moves values as text: below 1 that would round floats), pgfleet's own ``pgfleet.*`` switches,
``seed``, a value that is
not one constant (``SET x = a, b``, ``FROM CURRENT``, ``TIME ZONE INTERVAL …``), and anything inside a
transaction block (a SET there is undone by ROLLBACK)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from collections.abc import Sequence

from pglast import ast, parse_sql
from pglast.enums import VariableSetKind
from pglast.parser import ParseError

from . import protocol as p
from . import wire
from .pool import Leases

# settings the coordinator reports (ParameterStatus) that routed statements follow, as it names them
REPORTED_NAMES = ("DateStyle", "IntervalStyle", "TimeZone", "search_path")
REPORTED = frozenset(name.lower() for name in REPORTED_NAMES)
NOT_RESULTS = frozenset({"application_name"})  # changes nothing a statement returns: not worth a connection
_KEPT_ON_COORDINATOR = frozenset({
    "role", "session_authorization", "client_encoding", "names", "standard_conforming_strings", "seed",
    "transaction_isolation", "transaction_read_only", "transaction_deferrable", "default_transaction_isolation",
    "default_transaction_read_only", "default_transaction_deferrable", "idle_session_timeout", "transaction_timeout",
    # below 1, floats print with fewer digits than they hold: the router's text round trips of values (partial
    # aggregates, rows it inserts) would round them
    "extra_float_digits",
})


@dataclass(frozen=True)
class SettingChange:
    name: str | None  # None: RESET ALL
    value: str | None  # None: back to its default (RESET, SET … TO DEFAULT)
    local: bool = False  # SET LOCAL outside a transaction block: PostgreSQL warns and changes nothing

    def apply(self, settings: dict[str, str]) -> None:
        """``settings`` (the session's carried values, by lower-case name) after this change."""
        if self.local:
            return
        if self.name is None:
            settings.clear()
        elif self.value is None or self.name in REPORTED or self.name in NOT_RESULTS:
            settings.pop(self.name, None)
        else:
            settings[self.name] = self.value


def setting_change(sql: str) -> SettingChange | None:
    """The change when ``sql`` is one SET / RESET the router carries to routed statements, else None."""
    if not sql.lstrip()[:5].upper().startswith(("SET", "RESET")):
        return None  # every statement comes here: no parse, no cache entry
    return _parsed_change(sql)


@functools.lru_cache(maxsize=256)
def _parsed_change(sql: str) -> SettingChange | None:
    try:
        statements = parse_sql(sql)
    except ParseError:
        return None
    if len(statements) != 1 or not isinstance(stmt := statements[0].stmt, ast.VariableSetStmt):
        return None
    if stmt.kind == VariableSetKind.VAR_RESET_ALL:
        return SettingChange(None, None)
    name = str(stmt.name or "").lower()
    if not name or name in _KEPT_ON_COORDINATOR or name.startswith("pgfleet."):  # pgfleet's own switches: never
        return None
    if stmt.kind in (VariableSetKind.VAR_RESET, VariableSetKind.VAR_SET_DEFAULT):
        return SettingChange(name, None, bool(stmt.is_local))
    if name in REPORTED and stmt.kind == VariableSetKind.VAR_SET_VALUE:
        return SettingChange(name, None, bool(stmt.is_local))  # any value: the coordinator reports what it became
    if stmt.kind != VariableSetKind.VAR_SET_VALUE or len(stmt.args or ()) != 1:
        return None
    [arg] = stmt.args or ()
    value = arg.val if isinstance(arg, ast.A_Const) else None
    if isinstance(value, ast.String):
        text = str(value.sval)
    elif isinstance(value, ast.Integer):
        text = str(value.ival)
    elif isinstance(value, ast.Float):
        text = str(value.fval)
    else:
        return None
    return SettingChange(name, text, bool(stmt.is_local))


def settle(change: SettingChange, reply: bytes, settings: dict[str, str], reported: dict[str, str]) -> bool:
    """The coordinator's whole ``reply`` to the SET: when it accepted it, ``settings`` take the change and
    ``reported`` the ParameterStatus it sent (True); refused, nothing changes (False)."""
    messages = wire.Framer().feed(reply)
    ready = next((i for i, (t, _) in enumerate(messages) if t == b"Z"), len(messages))
    messages = messages[:ready]  # the SET's own reply: what follows answers the client's next statements
    if any(t == b"E" for t, _ in messages) or not any(t == b"C" and body[:-1] in (b"SET", b"RESET") for t, body in messages):
        return False
    change.apply(settings)
    for type_byte, payload in messages:
        if type_byte == b"S" and isinstance(status := p.decode_backend(type_byte, payload), p.ParameterStatus):
            reported[status.name] = status.value
    return True


def worker_settings(startup: Sequence[tuple[str, str]], reported: dict[str, str],
                    settings: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A session's worker connections' startup parameters: the client's own (not the login's), the
    coordinator's reported DateStyle, IntervalStyle, TimeZone, search_path and client_encoding, and the
    session's carried SET values."""
    out = {k: v for k, v in startup if k not in ("user", "database", "replication", "application_name")
           and not k.startswith("_pq_.")}
    for name in (*REPORTED_NAMES, "client_encoding"):
        if name in reported:
            out[name] = reported[name]
    out.update(settings)
    return tuple(out.items())


class SessionSettings:
    """Mixed into the client session: the SETs its routed statements follow. The session sets these
    attributes and defines ``pin``."""

    startup_params: tuple[tuple[str, str], ...]  # the client's startup message's
    reported: dict[str, str]  # the coordinator's ParameterStatus values
    session_settings: dict[str, str]  # the SET values carried (by lower-case name)
    pending_setting: SettingChange | None  # a SET sent to the coordinator, not answered yet
    setting_reply: list[bytes]  # the coordinator's reply to it so far
    settings_changed: bool  # a SET ran on the coordinator: a new backend there would lack it
    leases: Leases

    def pin(self) -> bool:
        raise NotImplementedError

    def follow_setting(self, sql: str) -> bool:
        """Whether ``sql`` is a SET the session's routed statements follow (:mod:`.settings`): then it goes to the
        coordinator and its answer applies it."""
        change = setting_change(sql)
        if change is not None:
            self.pending_setting, self.setting_reply, self.settings_changed = change, [], True
        return change is not None

    def coordinator_params(self) -> tuple[tuple[str, str], ...]:
        """The startup parameters of a new coordinator backend for this session (after a failover): the
        client's own, and after a SET the values its backend had (reported ones, the carried SETs)."""
        if not self.settings_changed:
            return self.startup_params
        params = dict(self.startup_params)
        for name in (*REPORTED_NAMES, "application_name"):
            if name in self.reported:
                params[name] = self.reported[name]
        params.update(self.session_settings)
        return tuple(params.items())

    def _worker_settings(self) -> tuple[tuple[str, str], ...]:
        return worker_settings(self.startup_params, self.reported, self.session_settings)

    def _setting_answered(self) -> None:
        """The coordinator answered a SET / RESET the session's routed statements follow (:mod:`.settings`)."""
        change, self.pending_setting = self.pending_setting, None
        reply, self.setting_reply = b"".join(self.setting_reply), []
        if change is not None and settle(change, reply, self.session_settings, self.reported):
            if self.reported.get("client_encoding") != "UTF8" or self.reported.get("standard_conforming_strings") != "on":
                self.pin()
            self.leases.settings = self._worker_settings()
