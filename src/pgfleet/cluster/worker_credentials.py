"""Where the coordinator keeps the passwords it reaches the workers with: in its data directory, not in
the database.

Each worker's foreign server names a passfile by a path relative to the coordinator's data directory
(``passfile 'pgfleet_w1.pgpass'``; a backend's working directory is its data directory) holding one line
``*:*:*:*:<password>``. User mappings hold only the user name. So ``pg_dump`` of the coordinator holds no
password, and a copy restored into another server (another data directory) finds no passfile: its foreign
servers and dblink links cannot log in to the live workers. A physical copy of the data directory
(``pg_basebackup``, a coordinator standby) carries the files, as it should.

The coordinator's server writes the file itself (``COPY … TO PROGRAM`` under ``umask 077``: libpq ignores a
passfile that others can read, and plain ``COPY TO`` creates 0644 files), so an existing coordinator on
another host works as a local one. The password travels as COPY data (into a temporary table, then out to the program), never in a
statement's text or the program's argv.
Non-superuser roles need ``password_required 'false'`` on their user mappings (postgres_fdw otherwise wants
a password in the mapping); only a superuser can set it, and such roles get no USAGE on the servers.
"""

from __future__ import annotations

import logging
import re

import psycopg
from psycopg import sql

from ..errors import ExecuteError, SpecError
from ..execute import describe_error
from ..execute.connect import Conn
from ..execute.password import passfile_escape, passfile_text_password

log = logging.getLogger(__name__)

PASSFILE_OPTION = "passfile"
_SERVER_NAME = re.compile(r"^pgfleet_[a-z0-9_]+$")  # node names are checked by Fleet.add_node
_NOT_IN_PASSWORD = "\n\r\x1e\x1f"  # a passfile line ends at a line break; 0x1e/0x1f frame the COPY output


def passfile_name(server_name: str) -> str:
    """The worker's passfile, relative to the coordinator's data directory."""
    if not _SERVER_NAME.match(server_name):
        raise SpecError(f"malformed foreign server name {server_name!r}")
    return server_name + ".pgpass"


def store_password(conn: Conn, server_name: str, password: str) -> None:
    """Write (atomically, mode 0600) the passfile of ``server_name`` in the data directory of ``conn``'s server."""
    if any(ch in password for ch in _NOT_IN_PASSWORD):
        raise SpecError(f"the password for {server_name} contains a line break or a 0x1e/0x1f character",
                        hint="give the worker's account a password without control characters")
    name = passfile_name(server_name)
    program = f"umask 077 && cat > {name}.tmp && mv {name}.tmp {name}"
    try:
        # The line reaches the server as COPY data, never in a statement's text (which log_statement, an
        # error's STATEMENT line or pg_stat_activity could show); a temporary table carries it to the file.
        with conn.transaction():
            conn.execute("CREATE TEMPORARY TABLE pgfleet_passfile_line (line text)")
            with conn.cursor().copy("COPY pgfleet_passfile_line FROM STDIN") as copy:
                copy.write_row(["*:*:*:*:" + passfile_escape(password)])
            conn.execute(sql.SQL("COPY pgfleet_passfile_line TO PROGRAM {} WITH (FORMAT csv, DELIMITER E'\\x1f', "
                                 "QUOTE E'\\x1e', ENCODING 'UTF8')").format(sql.Literal(program)))
            conn.execute("DROP TABLE pgfleet_passfile_line")
    except psycopg.Error as exc:
        raise ExecuteError(f"writing the passfile {name} on the coordinator failed: {describe_error(exc)}",
                           hint="pgfleet needs a superuser on the coordinator (COPY TO PROGRAM)") from None


def read_password(conn: Conn, server_name: str) -> str | None:
    """The password in the passfile of ``server_name`` on ``conn``'s server, or None if there is none."""
    row = conn.execute("SELECT pg_read_file(%s, true)", (passfile_name(server_name),)).fetchone()
    if row is None or row[0] is None:
        return None
    return passfile_text_password(str(row[0]), "*", 0, "*", "*")


def remove_password(conn: Conn, server_name: str) -> None:
    name = passfile_name(server_name)
    conn.execute(sql.SQL("COPY (SELECT 1 WHERE false) TO PROGRAM {}").format(sql.Literal(f"rm -f {name}")))


def move_mapping_passwords(conn: Conn) -> list[str]:
    """Move passwords that older pgfleet versions kept in user mappings of worker servers into passfiles;
    the names of the servers changed. Idempotent."""
    rows = conn.execute(
        "SELECT fs.srvname, um.umuser, r.rolname, coalesce(r.rolsuper, false), um.umoptions, "
        "       coalesce(fs.srvoptions, '{}') "
        "FROM pg_user_mapping um JOIN pg_foreign_server fs ON fs.oid = um.umserver "
        "LEFT JOIN pg_roles r ON r.oid = um.umuser "
        "WHERE fs.srvname LIKE 'pgfleet\\_%' AND EXISTS (SELECT FROM unnest(um.umoptions) o "
        "                                                WHERE o LIKE 'password=%') "
        "ORDER BY fs.srvname, um.umuser = (SELECT oid FROM pg_roles WHERE rolname = current_user) DESC").fetchall()
    moved: list[str] = []
    for srvname, _umuser, rolname, rolsuper, umoptions, srvoptions in rows:
        options = dict(str(o).split("=", 1) for o in umoptions)
        if srvname not in moved:
            store_password(conn, srvname, options["password"])
            verb = "SET" if any(str(o).startswith(PASSFILE_OPTION + "=") for o in srvoptions) else "ADD"
            conn.execute(sql.SQL("ALTER SERVER {} OPTIONS ({} passfile {})").format(
                sql.Identifier(srvname), sql.SQL(verb), sql.Literal(passfile_name(srvname))))
            moved.append(srvname)
        changes = [sql.SQL("DROP password")]
        if not rolsuper and "password_required" not in options:
            changes.append(sql.SQL("ADD password_required 'false'"))
        role = sql.Identifier(rolname) if rolname is not None else sql.SQL("PUBLIC")
        conn.execute(sql.SQL("ALTER USER MAPPING FOR {} SERVER {} OPTIONS ({})").format(
            role, sql.Identifier(srvname), sql.SQL(", ").join(changes)))
    if moved:
        log.info("moved the passwords of %s from user mappings into passfiles", ", ".join(moved))
    return moved
