"""``lastval()`` and ``currval()`` after keys the router drew (pure).

A sequence's ``lastval`` and ``currval`` belong to the session that called ``nextval``. When the router draws
an INSERT's keys (:mod:`.keyfill`), ``nextval`` runs on a pooled coordinator connection (or came from the
process's key cache), not on the client's own coordinator session, which then answers ``lastval()`` with an
error (``55000``, not yet defined in this session) or with an older value. Drivers ask exactly that after an
INSERT: PHP's PDO ``lastInsertId()`` (Doctrine's identity ids) sends ``SELECT LASTVAL()``, others
``SELECT currval('t_id_seq')``.

So each session remembers the last key the router used for it, per sequence, and which sequence was last
(:class:`SessionSequences`). A Query that calls ``lastval()`` or ``currval(x)`` while that is known gets the
calls replaced: ``lastval()`` by the key, ``currval(x)`` by ``CASE (x)::regclass::oid WHEN <seq> THEN <key>
… ELSE currval(x) END`` — what the session's own ``nextval`` would have left. Anything else the session sends
to the coordinator may call ``nextval`` there (an INSERT it runs, a function), so it makes the remembered keys
unknown again (:meth:`SessionSequences.forget`): from then on the coordinator answers, as before. The
extended protocol's Parse is not rewritten (it forgets too).
"""

from __future__ import annotations

import itertools

from pglast.parser import ParseError

from .rewrite import Edit, apply_edits, scanned_tokens

_OPEN, _CLOSE = "ASCII_40", "ASCII_41"
_ENTRY_END = frozenset({"", "ASCII_44", "ASCII_59", "FROM", "INTO", "WHERE", "UNION", "ORDER", "LIMIT"})


class SessionSequences:
    """The keys the router drew for one session, as that session's ``nextval`` would have left them."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}  # sequence oid -> the last key used
        self.names: dict[tuple[str, str], int] = {}  # (schema, name) -> sequence oid
        self.latest = 0  # the sequence of the last key used (0: none)

    def drew(self, sequence: int, keys: list[int], name: tuple[str, str] = ("", "")) -> None:
        if sequence and keys:
            self.last[sequence] = keys[-1]
            self.latest = sequence
            if name[1]:
                self.names[name] = sequence

    def forget(self) -> None:
        self.last.clear()
        self.names.clear()
        self.latest = 0

    @property
    def known(self) -> bool:
        return self.latest != 0

    def rewrite(self, sql: str) -> str | None:
        """``sql`` with its ``lastval()`` and ``currval(…)`` calls answered from what is known; None: nothing to
        change (no such call, or it cannot be read)."""
        if not self.known:
            return None
        try:
            tokens = scanned_tokens(sql)
        except ParseError:  # the coordinator reports it
            return None
        edits: list[Edit] = []
        for i, (name_start, end, name) in enumerate(tokens):
            if name != "IDENT" or i + 1 >= len(tokens) or tokens[i + 1][2] != _OPEN:
                continue
            start = name_start
            if i > 0 and tokens[i - 1][2] == "ASCII_46":
                qualifier = tokens[i - 2] if i >= 2 else None
                if qualifier is None or sql[qualifier[0]:qualifier[1]].lower() != "pg_catalog":
                    continue  # another schema's function of that name
                start = qualifier[0]
            word = sql[name_start:end].lower()
            close = _matching(tokens, i + 1)
            if close is None:
                return None
            # a whole entry of the select list keeps the column name one server gives it
            first = i if start == name_start else i - 2  # the call's first token (pg_catalog when qualified)
            before = tokens[first - 1][2] if first > 0 else ""
            after = tokens[close + 1][2] if close + 1 < len(tokens) else ""
            named = f' AS "{word}"' if before in ("SELECT", "ASCII_44") and after in _ENTRY_END else ""
            if word == "lastval" and close == i + 2:
                edits.append(Edit(start, tokens[close][1], f"({self.last[self.latest]}::bigint){named}"))
            elif word == "currval" and close > i + 2:
                argument = sql[tokens[i + 1][1]:tokens[close][0]]
                named_key = self._named(tokens[i + 2:close], sql)
                if named_key is not None:  # a sequence named by a literal: its key, nothing to look up
                    edits.append(Edit(start, tokens[close][1], f"({named_key}::bigint){named}"))
                    continue
                cases = " ".join(f"WHEN {oid} THEN {key}::bigint" for oid, key in self.last.items())
                edits.append(Edit(start, tokens[close][1], f"(CASE ({argument})::regclass::oid {cases} "
                                                           f"ELSE pg_catalog.currval({argument}) END){named}"))
        if not edits or _overlap(edits):
            return None
        return apply_edits(sql, edits)


    def answered(self, sql: str) -> str | None:
        """A Query's text with its lastval / currval calls answered (:meth:`rewrite`), before it is routed or
        relayed; None: as it is."""
        if not self.known:
            return None
        lowered = sql.lower()
        return self.rewrite(sql) if "lastval" in lowered or "currval" in lowered else None

    def relayed(self, types: list[bytes], raw: bytes) -> None:
        """``raw`` (messages of ``types``) goes to the client's coordinator session: unless it is one plain
        SELECT that does not name nextval, it may call nextval there, and what is known is forgotten."""
        if not self.known or not any(t in (b"Q", b"P", b"E", b"F") for t in types):
            return
        if types == [b"Q"]:
            plain = raw[5:-1].decode(errors="replace").lstrip().lower()
            if plain.startswith("select") and "nextval" not in plain and ";" not in plain.rstrip("; \n"):
                return
        self.forget()


    def _named(self, argument: tuple[tuple[int, int, str], ...], sql: str) -> int | None:
        """The key of the sequence a literal argument names (``'s'``, ``'public.s'``, ``'"S"'::regclass``)
        when the router drew it for this session; None otherwise (an expression, or another sequence)."""
        if not argument or argument[0][2] != "SCONST" or (len(argument) != 1 and not (
                len(argument) == 3 and argument[1][2] == "TYPECAST" and sql[argument[2][0]:argument[2][1]].lower() == "regclass")):
            return None
        literal = sql[argument[0][0]:argument[0][1]]
        if not literal.startswith("'"):
            return None
        parts = _name_parts(literal[1:-1].replace("''", "'"))
        if len(parts) == 2:
            oid = self.names.get((parts[0], parts[1]))
        elif len(parts) == 1:
            found = [o for (_, name), o in self.names.items() if name == parts[0]]
            oid = found[0] if len(found) == 1 else None
        else:
            return None
        return self.last.get(oid) if oid is not None else None


def _name_parts(text: str) -> list[str]:
    """A regclass name's parts as PostgreSQL reads them: unquoted parts folded to lower case."""
    parts, current, quoted, i = [], "", False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            if quoted and text[i + 1:i + 2] == '"':
                current += '"'
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch if quoted else ch.lower()
        i += 1
    return [*parts, current]


def _matching(tokens: tuple[tuple[int, int, str], ...], open_at: int) -> int | None:
    depth = 0
    for j in range(open_at, len(tokens)):
        depth += (tokens[j][2] == _OPEN) - (tokens[j][2] == _CLOSE)
        if depth == 0:
            return j
    return None


def _overlap(edits: list[Edit]) -> bool:
    """currval(currval(…)): nested calls are left to the coordinator."""
    spans = sorted((e.start, e.end) for e in edits)
    return any(b[0] < a[1] for a, b in itertools.pairwise(spans))
