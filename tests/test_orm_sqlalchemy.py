"""SQLAlchemy 2 through the pgfleet endpoint (the router, psycopg 3 driver: the extended protocol):
create_all, distribute / reference through the SQL API, reflection of what the coordinator holds, CRUD,
relationships (joinedload, selectinload), a transaction that rolls back, a role with SELECT on one table."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import routing_router
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer

pytestmark = pytest.mark.cluster

sa = pytest.importorskip("sqlalchemy")
from sqlalchemy import (  # noqa: E402 - after the importorskip that says why the module is skipped
    ForeignKey,
    Identity,
    Index,
    Numeric,
    String,
    UniqueConstraint,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError, ProgrammingError  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    Session,
    foreign,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

SCHEMA, READER, READER_PASSWORD = "orm_sqla", "pgfleet_test_sareader", "reader pw 2"


class Base(DeclarativeBase):
    pass


class Country(Base):
    __tablename__ = "sa_countries"
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    code: Mapped[str] = mapped_column(String(2), unique=True)


class Customer(Base):
    __tablename__ = "sa_customers"
    __table_args__ = (Index("sa_customers_name_idx", "name"),)
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str]
    country_id: Mapped[int] = mapped_column(ForeignKey("sa_countries.id"))  # taken over at distribution
    country: Mapped[Country] = relationship()
    orders: Mapped[list[Order]] = relationship(back_populates="customer", cascade="all, delete-orphan",
                                               primaryjoin="Customer.id == foreign(Order.customer_id)")


class Order(Base):
    """Co-located with its customer: the primary key and the unique constraint include customer_id. The key
    to sa_customers is added after distribution (ALTER TABLE … ADD FOREIGN KEY through the router): not in the
    metadata, so create_all does not make it on the coordinator, where it would stop sa_customers from being
    distributed."""
    __tablename__ = "sa_orders"
    __table_args__ = (UniqueConstraint("customer_id", "reference", name="sa_orders_customer_reference"),)
    customer_id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str]
    total: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    customer: Mapped[Customer] = relationship(back_populates="orders",
                                              primaryjoin=lambda: Customer.id == foreign(Order.customer_id))


def _url(cluster: LocalCluster, port: int, user: str, password: str) -> Any:
    return sa.URL.create("postgresql+psycopg", username=user, password=password, host="127.0.0.1", port=port,
                         database=cluster.spec.dbname)


def _engine(cluster: LocalCluster, port: int, user: str | None = None, password: str | None = None) -> Any:
    return sa.create_engine(_url(cluster, port, user or cluster.spec.superuser, password or cluster.spec.coordinator.password),
                            connect_args={"options": f"-c search_path={SCHEMA} -c TimeZone=UTC"})


@pytest.fixture(scope="module")
def router(cluster: LocalCluster) -> Iterator[RouterServer]:
    cluster.start()
    with routing_router(cluster) as server:
        yield server


@pytest.fixture(scope="module")
def coord(cluster: LocalCluster) -> Iterator[psycopg.Connection[Any]]:
    c = cluster.spec.coordinator
    with psycopg.connect(host="127.0.0.1", port=c.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                         password=c.password, autocommit=True, options=f"-c search_path={SCHEMA}") as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(sql.Identifier(SCHEMA)))
        yield conn
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


@pytest.fixture(scope="module")
def engine(cluster: LocalCluster, router: RouterServer, coord: psycopg.Connection[Any]) -> Iterator[Any]:
    """The schema made with create_all and distributed through the SQL API, both through the router."""
    setup = _engine(cluster, router.config.port)
    Base.metadata.create_all(setup)
    with setup.begin() as conn:  # one transaction: the shards are made at its COMMIT
        conn.execute(text("SELECT pgfleet.reference_table('sa_countries')"))
        conn.execute(text("SELECT pgfleet.distribute_table('sa_customers', 'id', shard_count => 4)"))
        conn.execute(text("SELECT pgfleet.distribute_table('sa_orders', 'customer_id', colocate_with => 'sa_customers')"))
    assert router.config.routing is not None
    router.config.routing.refresh()  # the router's next 2-second catalog read, now
    with setup.begin() as conn:  # a later migration's key, as Alembic's op.create_foreign_key sends it
        conn.exec_driver_sql("ALTER TABLE sa_orders ADD CONSTRAINT sa_orders_customer_fk FOREIGN KEY(customer_id) "
                             "REFERENCES sa_customers (id) ON DELETE CASCADE")
    setup.dispose()  # its sessions ran DDL: the router keeps those on the coordinator; the application's are new
    app = _engine(cluster, router.config.port)
    yield app
    app.dispose()


def test_reflection_shows_what_the_coordinator_holds(engine: Any, coord: psycopg.Connection[Any]) -> None:
    """A distributed table is a partitioned table whose partitions are foreign tables: PostgreSQL keeps its
    primary key, unique constraints and foreign keys on the shards only (docs/architecture.md), so
    reflection sees its columns and its non-unique indexes; pgfleet.foreign_keys lists its keys. A reference
    table is a plain table on the coordinator: everything reflects."""
    insp = inspect(engine)
    assert [c["name"] for c in insp.get_columns("sa_orders")] == ["customer_id", "number", "reference", "total"]
    assert insp.get_pk_constraint("sa_customers")["constrained_columns"] == []
    assert insp.get_unique_constraints("sa_orders") == []
    assert insp.get_foreign_keys("sa_customers") == [] and insp.get_foreign_keys("sa_orders") == []
    assert [(i["name"], i["column_names"]) for i in insp.get_indexes("sa_customers")] == [("sa_customers_name_idx", ["name"])]
    assert insp.get_pk_constraint("sa_countries")["constrained_columns"] == ["id"]
    assert [u["column_names"] for u in insp.get_unique_constraints("sa_countries")] == [["code"]]
    keys = coord.execute("SELECT relid::regclass::text, columns, ref_relid::regclass::text FROM pgfleet.foreign_keys "
                         "WHERE relid::regclass::text LIKE 'sa_%' ORDER BY 1").fetchall()
    assert keys == [("sa_customers", ["country_id"], "sa_countries"), ("sa_orders", ["customer_id"], "sa_customers")]
    reflected = sa.MetaData()
    orders = sa.Table("sa_orders", reflected, autoload_with=engine)
    assert isinstance(orders.c.total.type, Numeric) and orders.c.total.type.scale == 2


def test_crud_relationships_and_transactions(engine: Any, router: RouterServer) -> None:
    with Session(engine) as s, s.begin():
        gh, fr = Country(code="GH"), Country(code="FR")
        s.add_all([gh, fr])
        s.flush()
        gh_id, fr_id = gh.id, fr.id
    with Session(engine, expire_on_commit=False) as s, s.begin():  # the countries' rows reach the copies at COMMIT: refer to them now
        customers = [Customer(name=f"c{i}", country_id=(gh_id if i % 2 else fr_id),
                              orders=[Order(number=n, reference=f"r{i}-{n}", total=Decimal(n)) for n in (1, 2, 3)])
                     for i in range(1, 7)]
        s.add_all(customers)
    ids = [c.id for c in customers]
    assert ids == list(range(ids[0], ids[0] + 6))  # identity ids, returned by INSERT … RETURNING
    routed_before, worker_txns_before = router.context.stats.routed, router.context.stats.worker_transactions

    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 18
        first = s.get(Customer, ids[0])
        assert first is not None and first.country.code == "GH" and sorted(o.number for o in first.orders) == [1, 2, 3]
        joined = s.scalars(select(Order).options(joinedload(Order.customer).joinedload(Customer.country))
                           .where(Order.customer_id == ids[1]).order_by(Order.number)).all()
        assert [(o.number, o.customer.name, o.customer.country.code) for o in joined] == [(1, "c2", "FR"), (2, "c2", "FR"),
                                                                                          (3, "c2", "FR")]
        loaded = s.scalars(select(Customer).options(selectinload(Customer.orders)).where(Customer.country_id == gh_id)
                           .order_by(Customer.id)).all()
        assert [(c.name, len(c.orders)) for c in loaded] == [("c1", 3), ("c3", 3), ("c5", 3)]
        assert s.scalar(select(func.sum(Order.total)).where(Order.customer_id == ids[0])) == Decimal(6)

    with Session(engine) as s, s.begin():
        order = s.get(Order, (ids[0], 2))
        assert order is not None
        order.total = Decimal("9.50")
    with Session(engine) as s:
        assert s.scalar(select(Order.total).where(Order.customer_id == ids[0], Order.number == 2)) == Decimal("9.50")

    with pytest.raises(IntegrityError, match="sa_orders_customer_fk"), Session(engine) as s, s.begin():
        s.add(Order(customer_id=10**9, number=1, reference="x", total=1))
    with pytest.raises(IntegrityError, match="sa_orders_customer_reference"), Session(engine) as s, s.begin():
        s.add(Order(customer_id=ids[0], number=9, reference="r1-1", total=1))
    with pytest.raises(IntegrityError, match="sa_customers_country_id_fkey"), Session(engine) as s, s.begin():
        s.add(Customer(name="nowhere", country_id=10**9))

    coordinator_before, drawn_before = router.context.stats.coordinator_transactions, router.context.stats.keys_drawn
    with Session(engine) as s, s.begin():  # a new country (a reference table) and a customer there, one transaction
        gb = Country(code="GB")
        s.add(gb)
        s.flush()  # the coordinator joins the transaction, and the router writes the copies in it
        gb_customer = Customer(name="gb1", country_id=gb.id)
        s.add(gb_customer)
        s.flush()  # its id drawn from the coordinator's sequence; its shard's key to sa_countries finds the copy's row
        assert s.scalar(select(Country.code).join(Customer, Customer.country_id == Country.id)
                        .where(Customer.id == gb_customer.id)) == "GB"
        gb_customer_id = gb_customer.id
    assert router.context.stats.coordinator_transactions == coordinator_before
    assert router.context.stats.keys_drawn == drawn_before + 1
    with Session(engine) as s, s.begin():
        s.delete(s.get(Customer, gb_customer_id))

    got_first = router.context.stats.rows_got_first
    with Session(engine, expire_on_commit=False) as s, s.begin():  # a routed write, then a multi-row flush
        s.execute(sa.update(Customer).where(Customer.id == ids[0]).values(name="c1"))  # one shard
        bulk = [Customer(name=f"bulk{i}", country_id=gh_id) for i in range(3)]
        s.add_all(bulk)
        s.flush()  # INSERT … SELECT p0, p1 FROM (VALUES ($1, $2, 0), …) ORDER BY sen_counter: its rows read first
    assert router.context.stats.rows_got_first == got_first + 3
    assert router.context.stats.coordinator_transactions == coordinator_before
    bulk_ids = [c.id for c in bulk]
    assert bulk_ids == sorted(bulk_ids) and len(set(bulk_ids)) == 3  # each object got its own row's id
    with Session(engine) as s, s.begin():
        assert [s.get(Customer, i).name for i in bulk_ids] == ["bulk0", "bulk1", "bulk2"]  # type: ignore[union-attr]
        s.execute(sa.delete(Customer).where(Customer.id.in_(bulk_ids)))

    with pytest.raises(RuntimeError), Session(engine) as s, s.begin():  # rolled back: nothing anywhere
        s.add(Customer(name="gone", country_id=gh_id, orders=[Order(number=1, reference="g", total=1)]))
        s.flush()
        s.execute(sa.update(Order).where(Order.customer_id == ids[2]).values(total=0))
        raise RuntimeError("roll back")
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Customer).where(Customer.name == "gone")) == 0
        assert s.scalar(select(func.sum(Order.total)).where(Order.customer_id == ids[2])) == Decimal(6)
    coordinator_before = router.context.stats.coordinator_transactions
    with pytest.raises(RuntimeError), Session(engine) as s, s.begin():  # a routed write, then every shard ($n values)
        order = s.get(Order, (ids[0], 1))
        assert order is not None
        order.reference = "moved"
        s.flush()  # one shard
        assert s.scalar(select(func.count()).select_from(Order).where(Order.reference == "moved")) == 1  # sees it
        assert s.execute(sa.update(Order).where(Order.number == 1).values(total=Decimal(7))).rowcount == 6
        assert s.scalars(select(Order.total).where(Order.number == 1).order_by(Order.customer_id)).all() \
            == [Decimal(7)] * 6
        raise RuntimeError("roll back")
    assert router.context.stats.coordinator_transactions == coordinator_before  # none of it went to the coordinator
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Order).where(Order.reference == "moved")) == 0

    with Session(engine) as s, s.begin():
        victim = s.get(Customer, ids[3])
        s.delete(victim)  # the ORM's cascade deletes its orders first
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Customer)) == 5
        assert s.scalar(select(func.count()).select_from(Order)) == 15
    # The application's transactions above ran on the workers (the get by key and its UPDATE, the failed
    # inserts, the rolled-back transaction, the cascade delete); a Session whose first statement needs the
    # coordinator (count(*) in a transaction) keeps that transaction there. Before, psycopg's Flush after
    # the Sync of the setup's executemany (insertmanyvalues) pinned the session: all of it ran on the
    # coordinator.
    assert router.context.stats.routed >= routed_before + 8, router.context.stats
    assert router.context.stats.worker_transactions >= worker_txns_before + 4, router.context.stats
    # Outside a transaction the extended protocol is routed, also on a new engine's first connection, where
    # SQLAlchemy ran `select pg_catalog.version()` and SHOW (they kept the session on the coordinator before)
    # and psycopg's type lookup for hstore inside a transaction.
    fresh = sa.create_engine(engine.url, connect_args={"options": f"-c search_path={SCHEMA} -c TimeZone=UTC"},
                             isolation_level="AUTOCOMMIT")
    try:
        with fresh.connect() as conn:
            before = router.context.stats.routed
            assert conn.execute(select(Order.total).where(Order.customer_id == ids[0], Order.number == 2)).all() \
                == [(Decimal("9.50"),)]
            assert router.context.stats.routed == before + 1
    finally:
        fresh.dispose()


def test_a_role_with_select_on_one_table(cluster: LocalCluster, router: RouterServer, engine: Any,
                                         coord: psycopg.Connection[Any]) -> None:
    role = sql.Identifier(READER)
    if coord.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
        coord.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(role))
    coord.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(READER_PASSWORD)))
    reader = _engine(cluster, router.config.port, READER, READER_PASSWORD)
    try:
        coord.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), role))
        coord.execute(sql.SQL("GRANT SELECT ON sa_customers TO {}").format(role))
        expected = coord.execute("SELECT count(*) FROM sa_customers").fetchone()
        with Session(reader) as s:
            assert (s.scalar(select(func.count()).select_from(Customer)),) == expected
            s.scalars(select(Customer).where(Customer.id == 1)).all()  # single-shard
        for statement in (select(func.count()).select_from(Order), select(Order).where(Order.customer_id == 1)):
            with pytest.raises(ProgrammingError, match=r"permission denied for table sa_orders(?!_)"), Session(reader) as s:
                s.execute(statement).all()
        with pytest.raises(ProgrammingError, match=r"permission denied for table sa_customers(?!_)"), \
                Session(reader) as s, s.begin():
            s.execute(sa.update(Customer).where(Customer.id == 1).values(name="x"))
    finally:
        reader.dispose()
        coord.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(role))
