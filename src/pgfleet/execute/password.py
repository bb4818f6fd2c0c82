"""Where the password for an existing server comes from, so that it never has to be on a command line.

Order, as libpq's: ``password=`` in the connection string (accepted, but the caller warns: it is in the
process list and the shell history), ``PGPASSWORD``, then the passfile (``passfile=`` in the string,
``PGPASSFILE``, or ``~/.pgpass``) line matching host, port, database and user. The password itself is
never part of a message.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError

DSN_WARNING = ("the password given in --dsn is visible to other users in the process list and stays in the "
               "shell history; put it in PGPASSWORD or a passfile (PGPASSFILE or passfile= in the DSN), or leave "
               "it out to be asked for it")


@dataclass(frozen=True)
class FoundPassword:
    password: str | None = field(repr=False)
    source: str  # "dsn", "PGPASSWORD", "passfile <path>", or "none"


def _fields(line: str) -> list[str]:
    """Split a passfile line at unescaped ':' (a backslash escapes ':' and '\\')."""
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line):
            buf.append(line[i + 1])
            i += 2
            continue
        if ch == ":" and len(parts) < 4:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    parts.append("".join(buf))
    return parts


def passfile_password(path: Path, host: str, port: int, dbname: str, user: str) -> str | None:
    """The password of the first line of ``path`` that matches (``*`` matches anything), or None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SpecError(f"cannot read the passfile {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SpecError(f"the passfile {path} can be read by other users", hint=f"chmod 600 {path}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the passfile {path}: {exc.strerror}") from None
    return passfile_text_password(text, host, port, dbname, user)


def passfile_text_password(text: str, host: str, port: int, dbname: str, user: str) -> str | None:
    """The password of the first line of passfile ``text`` that matches (``*`` matches anything), or None."""
    for raw in text.splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = _fields(raw)
        if len(fields) != 5:
            continue
        want = (host, str(port), dbname, user)
        if all(f in ("*", w) for f, w in zip(fields[:4], want, strict=True)):
            return fields[4]
    return None


def find_password(params: Mapping[str, object], env: Mapping[str, str], *, host: str, port: int,
                  dbname: str, user: str) -> FoundPassword:
    """The password for a server described by connection-string ``params``, and where it came from."""
    if params.get("password"):
        return FoundPassword(str(params["password"]), "dsn")
    if env.get("PGPASSWORD"):
        return FoundPassword(env["PGPASSWORD"], "PGPASSWORD")
    named = params.get("passfile") or env.get("PGPASSFILE")
    path = Path(str(named)).expanduser() if named else Path(env.get("HOME", str(Path.home()))) / ".pgpass"
    password = passfile_password(path, host, port, dbname, user)
    if password is not None:
        return FoundPassword(password, f"passfile {path}")
    if named and not path.exists():
        raise SpecError(f"the passfile {path} does not exist")
    return FoundPassword(None, "none")


def passfile_escape(text: str) -> str:
    """``text`` as one field of a passfile line (``\\`` and ``:`` escaped by a backslash)."""
    return text.replace("\\", "\\\\").replace(":", "\\:")
