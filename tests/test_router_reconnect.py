"""A client session through the router whose coordinator connection is lost while it is idle (the
coordinator restarted, as after a crash or a failover) is logged in again as the same role and goes on
without reconnecting; a session in a transaction or with session state ends as before (57P01)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import routing_router
from test_roles import drop_role
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from pgfleet.router.backend import WorkerConnection, WorkerLogin
from pgfleet.router.process import local_routing
from pgfleet.router.reauth import ScramRecord, SecretReader, parse_secret

pytestmark = pytest.mark.cluster

ROLE, PASSWORD = "pgfleet_test_reconnect", "reconnect pw 1"


def test_the_client_key_comes_from_the_proof_and_the_stored_key() -> None:
    """RFC 7677's example exchange (user "user", password "pencil"): the proof and StoredKey give the
    ClientKey, whose hash is the StoredKey; another StoredKey gives nothing."""
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    record = ScramRecord()
    initial = b"SCRAM-SHA-256\0" + len(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").to_bytes(4, "big") \
        + b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    record.client_message(initial)
    record.server_message((11).to_bytes(4, "big") + b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                          b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    record.client_message(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                          b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    record.server_message((12).to_bytes(4, "big") + b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    record.server_message((0).to_bytes(4, "big"))
    assert record.usable
    assert record.client_key(stored) == client_key
    assert record.client_key(hashlib.sha256(b"another").digest()) is None
    assert parse_secret(f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${base64.b64encode(stored).decode()}:"
                        f"{base64.b64encode(b'x' * 32).decode()}") == (stored, b"x" * 32)
    assert parse_secret("md5abc") is None
    md5 = ScramRecord()
    md5.server_message((5).to_bytes(4, "big") + b"salt")
    md5.server_message((0).to_bytes(4, "big"))
    assert not md5.usable


def test_an_idle_session_goes_on_after_the_coordinator_restarts(fleet: Fleet, cluster: LocalCluster,
                                                                schema: str) -> None:
    conn = fleet.conn()
    drop_role(fleet, ROLE)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    try:
        conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(ROLE)))
        conn.execute(b"CREATE TABLE r (id bigint PRIMARY KEY, v int)")
        fleet.distribute(DistributeSpec(QualifiedName(schema, "r"), "id", HashSpec(4)))
        conn.execute(sql.SQL("GRANT SELECT, INSERT ON r TO {}").format(sql.Identifier(ROLE)))
        with routing_router(cluster) as router:
            info = dict(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, password=PASSWORD,
                        autocommit=True, options=f"-c search_path={schema}")
            with psycopg.connect(user=ROLE, **info) as idle, \
                    psycopg.connect(user=ROLE, **info) as in_transaction, \
                    psycopg.connect(user=ROLE, **info) as with_set, \
                    psycopg.connect(user=ROLE, **info) as with_state:  # type: ignore[arg-type]
                idle.execute(b"INSERT INTO r VALUES (1, 10)")
                prepared = b"SELECT count(*) FROM r WHERE v > %s"
                assert idle.execute(prepared, (0,), prepare=True).fetchone() == (1,)  # a named statement
                idle.execute(b"SELECT count(*) FROM pg_class")  # on the coordinator, nothing kept
                in_transaction.execute(b"BEGIN")
                in_transaction.execute(b"SELECT count(*) FROM pg_class")  # a transaction on the coordinator
                with_set.execute(b"SET statement_timeout = '5s'")  # carried: the new backend gets it too
                with_set.execute(b"SET TimeZone = 'Asia/Tokyo'")
                with_state.execute(b"CREATE TEMP TABLE mine (x int)")  # state the new backend would not have
                server = cluster.server(cluster.spec.coordinator.name)
                server.stop("immediate")  # as a crash: no goodbye to the sessions
                server.start()
                conn.close()  # the test's own connection ended with it
                conn = fleet.conn()
                # the idle session goes on: same role, same search_path, its prepared statement still there
                assert idle.execute(b"SELECT current_user, (current_schemas(false))[1]").fetchone() == (ROLE, schema)
                idle.execute(b"INSERT INTO r VALUES (2, 20)")  # routed to a worker
                assert idle.execute(prepared, (0,), prepare=True).fetchone() == (2,)
                assert idle.execute(b"SELECT sum(v) FROM r").fetchone() == (30,)
                with pytest.raises(psycopg.OperationalError):  # its transaction is gone: as before, it ends
                    in_transaction.execute(b"SELECT 1")
                with pytest.raises(psycopg.OperationalError):
                    with_state.execute(b"SELECT 1")
                assert with_set.execute(b"SELECT current_setting('statement_timeout'), current_setting('TimeZone')"
                                        ).fetchone() == ("5s", "Asia/Tokyo")
                with_set.execute(b"INSERT INTO r VALUES (3, 30)")  # routed, under the same settings
                # a planned restart: every backend says FATAL 57P01 before it goes; for the idle session the
                # router keeps that from the client and logs it in again
                server.stop("fast")
                server.start()
                conn.close()
                conn = fleet.conn()
                assert idle.execute(b"SELECT sum(v) FROM r").fetchone() == (60,)
                assert idle.execute(prepared, (0,), prepare=True).fetchone() == (3,)
                assert with_set.execute(b"SHOW TimeZone").fetchone() == ("Asia/Tokyo",)
            assert router.context.stats.sessions_logged_in_again == 4
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        drop_role(fleet, ROLE)


def test_sessions_of_one_role_share_one_secret_read(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """At a failover every idle session is logged in again at once: the secrets are read with a few superuser
    connections, one read per role at a time, not one connection per session."""
    login = local_routing(cluster).coordinator_login()  # type: ignore[misc]
    opened: list[WorkerLogin] = []
    real_open = WorkerConnection.open

    async def counting_open(login: WorkerLogin, *args: Any, **kwargs: Any) -> WorkerConnection:
        opened.append(login)  # the real connection opens: only counted
        return await real_open(login, *args, **kwargs)

    monkeypatch.setattr(WorkerConnection, "open", counting_open)

    async def many() -> list[str | None]:
        reader = SecretReader()
        return list(await asyncio.gather(*(reader.secret(cluster.spec.superuser, login) for _ in range(20)),
                                         *(reader.secret("pgfleet_no_such_role", login) for _ in range(5))))

    found = asyncio.run(many())
    assert all(s is not None and s.startswith("SCRAM-SHA-256$") for s in found[:20]) and found[20:] == [None] * 5
    assert len(opened) == 2
