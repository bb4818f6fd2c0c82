"""`pgfleet demo`: the seeds' scenarios, end to end, on the local cluster.

Seed 000/001: a library split over two sites. booksample is list-distributed by location (paris, lagos),
lend is kept at the site of its booksample (co-located), book and student are reference tables.
Seed 003: products hash-distributed over 4 shards, ids unique from one coordinator sequence, UPDATE
through the parent.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from .cluster.fleet import Fleet
from .execute.connect import Conn
from .errors import PgfleetError, TopologyError
from .spec import DistributeSpec, HashSpec, ListShard, ListSpec, QualifiedName, ReferenceSpec

SCHEMA = "demo"

LIBRARY = """
CREATE SCHEMA demo;
CREATE TABLE demo.book (id serial PRIMARY KEY, title varchar NOT NULL);
CREATE TABLE demo.student (id serial PRIMARY KEY, name varchar NOT NULL);
CREATE TABLE demo.booksample (
    id serial, book_id int NOT NULL, state varchar, lendable bool DEFAULT false,
    location varchar NOT NULL CHECK (location IN ('paris', 'lagos')), PRIMARY KEY (id, location));
CREATE TABLE demo.lend (
    booksample_id int NOT NULL, location varchar NOT NULL, student_id int NOT NULL,
    at date NOT NULL DEFAULT current_date, returned_at date);
INSERT INTO demo.book (title) VALUES ('Things Fall Apart'), ('Les Misérables'), ('Half of a Yellow Sun');
INSERT INTO demo.student (name) VALUES ('Ada'), ('Chinua'), ('Victor');
INSERT INTO demo.booksample (book_id, state, lendable, location) VALUES
    (1, 'new', true, 'lagos'), (2, 'old', true, 'paris'), (3, 'new', true, 'lagos'), (2, 'new', false, 'paris');
INSERT INTO demo.lend (booksample_id, location, student_id) VALUES (1, 'lagos', 1), (2, 'paris', 3), (3, 'lagos', 2);
"""

PRODUCTS = """
CREATE TABLE demo.products (id bigserial PRIMARY KEY, name text NOT NULL, price numeric);
"""


def _show(console: Console, title: str, cols: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)


def _query(conn: Conn, console: Console, title: str, text: str) -> list[tuple[object, ...]]:
    console.print(f"[bold cyan]{title}[/]\n[dim]{text}[/]")
    cur = conn.execute(text.encode())
    rows = cur.fetchall()
    cols = [d.name for d in cur.description] if cur.description else []
    if cols and cols[0] == "QUERY PLAN":
        console.print("\n".join(str(r[0]) for r in rows), highlight=False)
    else:
        _show(console, "", cols, rows)
    return rows


def run_demo(fleet: Fleet, console: Console, client: Conn | None = None) -> None:
    """The scenarios: schema changes through ``fleet`` (the coordinator), the application's statements
    through ``client`` (an autocommit connection to the cluster's endpoint, the router) or the coordinator."""
    topo = fleet.topology()
    workers = [w.name for w in topo.workers]
    if len(workers) < 2:
        raise TopologyError(f"the demo needs 2 workers, the cluster has {len(workers)}",
                            hint="create a cluster with 'pgfleet up --workers 2'")
    paris, lagos = workers[0], workers[1]
    ddl = fleet.conn()  # schema changes, and EXPLAIN: the plans are the coordinator's
    conn = client or ddl
    ddl.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))

    console.print(Panel(f"Seeds 000/001 — a library on two sites: paris on node {paris}, lagos on node {lagos}"))
    ddl.execute(LIBRARY.encode())
    for t in ("book", "student"):
        fleet.reference(ReferenceSpec(QualifiedName(SCHEMA, t)))
        console.print(f"reference table demo.{t}: a copy on {', '.join(workers)}")
    fleet.distribute(DistributeSpec(QualifiedName(SCHEMA, "booksample"), "location", ListSpec((
        ListShard(("paris",), paris), ListShard(("lagos",), lagos)))))
    console.print(f"demo.booksample distributed by location: paris → {paris}, lagos → {lagos}")
    fleet.distribute(DistributeSpec(QualifiedName(SCHEMA, "lend"), "location",
                                    colocate_with=QualifiedName(SCHEMA, "booksample")))
    console.print("demo.lend co-located with demo.booksample: each lend is stored at its booksample's site")
    conn.execute("INSERT INTO demo.booksample (book_id, state, lendable, location) VALUES (3, 'new', true, 'paris')")
    _query(ddl, console, "Placement of every booksample row (tableoid names the shard)",
           "SELECT b.id, b.location, b.state, s.node FROM demo.booksample b "
           "JOIN pgfleet.shards s ON format('%I.%I', s.foreign_schema, s.foreign_table) = b.tableoid::regclass::text "
           "ORDER BY b.id")
    _query(ddl, console, "A query on location = 'lagos' touches only the lagos shard",
           "EXPLAIN (COSTS OFF) SELECT state, lendable, location FROM demo.booksample WHERE location = 'lagos'")
    _query(ddl, console, "Lends with their samples: the join runs on each site, per shard pair",
           "EXPLAIN (COSTS OFF) SELECT b.id, l.student_id FROM demo.booksample b JOIN demo.lend l "
           "ON l.location = b.location AND l.booksample_id = b.id")
    _query(conn, console, "Who has which book (distributed join + reference tables)",
           "SELECT s.name AS student, bk.title, b.location, l.at FROM demo.lend l "
           "JOIN demo.booksample b ON b.location = l.location AND b.id = l.booksample_id "
           "JOIN demo.book bk ON bk.id = b.book_id JOIN demo.student s ON s.id = l.student_id ORDER BY s.name")

    console.print(Panel("Seed 003 — products hash-distributed over 4 shards, ids from one sequence"))
    ddl.execute(PRODUCTS.encode())
    fleet.distribute(DistributeSpec(QualifiedName(SCHEMA, "products"), "id", HashSpec(4)))
    conn.execute("INSERT INTO demo.products (name, price) VALUES ('playstation', 499), ('xbox', 300), "
                 "('wii', 250), ('saturn', 99)")
    _query(conn, console, "Unique ids, each row in the shard its id hashes to",
           "SELECT id, name, price, tableoid::regclass AS shard FROM demo.products ORDER BY id")
    _query(ddl, console, "UPDATE through the parent: pruned to one shard and pushed down",
           "EXPLAIN (COSTS OFF) UPDATE demo.products SET name = 'wii-u' WHERE id = 3 AND name LIKE 'wii'")
    conn.execute("UPDATE demo.products SET name = 'wii-u' WHERE id = 3 AND name LIKE 'wii'")
    _query(conn, console, "After the update", "SELECT id, name FROM demo.products WHERE id = 3")
    try:
        with conn.transaction():
            conn.execute("UPDATE demo.products SET id = 100 WHERE id = 1")
        console.print("[red]a key update was accepted: this is a bug[/]")
    except Exception as exc:
        first = str(exc).splitlines()[0]
        console.print(f"[bold cyan]Changing the key is refused, never silently misplaced:[/]\n  {first}")
    st = fleet.status()
    _show(console, "Shards per node", ("node", "role", "shards", "health"),
          [(n.name, n.role, n.shards, "up" if n.healthy else "down") for n in st.nodes])
    console.print(f"The demo's tables stay in schema {SCHEMA}; try: psql \"$(pgfleet dsn)\" -c 'TABLE demo.products'")


__all__ = ["PgfleetError", "run_demo"]
