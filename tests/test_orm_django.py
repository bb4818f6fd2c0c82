"""A Django project through the pgfleet endpoint (the router, psycopg 3 backend): migrations that create the
models and distribute them through the SQL API, CRUD, select_related, bulk_create, atomic, then a migration
after distribution adding a column, an index, a unique constraint and a foreign key; a role with SELECT on one
table only.

The app is tests/djshop (models in their final state, migrations 0001–0003). Django's settings can be
configured once per process: this module does it for one router and one schema."""

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

django = pytest.importorskip("django")  # the test extra installs it; an install without it says so in the summary

SCHEMA, READER, READER_PASSWORD = "orm_django", "pgfleet_test_djreader", "reader pw 1"


def _coordinator(cluster: LocalCluster) -> psycopg.Connection[Any]:
    coord = cluster.spec.coordinator
    return psycopg.connect(host="127.0.0.1", port=coord.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                           password=coord.password, autocommit=True, options=f"-c search_path={SCHEMA}")


@pytest.fixture(scope="module")
def router(cluster: LocalCluster) -> Iterator[RouterServer]:
    cluster.start()
    with routing_router(cluster) as server:
        yield server


@pytest.fixture(scope="module")
def shop(cluster: LocalCluster, router: RouterServer) -> Iterator[psycopg.Connection[Any]]:
    """Django configured against the router, the shop migrated to 0002 (distributed); yields a coordinator
    connection in the shop's schema."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    with _coordinator(cluster) as coord:
        coord.execute(sql.SQL("DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}").format(sql.Identifier(SCHEMA)))
        drop_role_sql(coord)
        coord.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(READER), sql.Literal(READER_PASSWORD)))
        endpoint = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": router.config.port,
                    "NAME": cluster.spec.dbname, "USER": cluster.spec.superuser,
                    "PASSWORD": cluster.spec.coordinator.password,
                    # startup options, not SET statements: a SET would keep the session on the coordinator
                    "OPTIONS": {"options": f"-c search_path={SCHEMA} -c TimeZone=UTC"}}
        settings.configure(INSTALLED_APPS=["djshop"], USE_TZ=True, TIME_ZONE="UTC",
                           DATABASES={"default": endpoint,
                                      "reader": {**endpoint, "USER": READER, "PASSWORD": READER_PASSWORD}})
        django.setup()
        call_command("migrate", "djshop", "0002", verbosity=0)
        connections.close_all()  # as after `manage.py migrate`: the app's sessions are new (DDL kept this one on the coordinator)
        assert router.config.routing is not None
        router.config.routing.refresh()  # the router's next 2-second catalog read, now
        try:
            yield coord
        finally:
            connections.close_all()
            coord.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
            drop_role_sql(coord)


def drop_role_sql(coord: psycopg.Connection[Any]) -> None:
    if coord.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
        coord.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(READER)))


def test_django_migrations_crud_and_a_migration_after_distribution(shop: psycopg.Connection[Any],
                                                                    router: RouterServer) -> None:
    from django.db import IntegrityError, connection, models, transaction
    from django.db.migrations.executor import MigrationExecutor

    # 0002 distributed the tables in its transaction; the keys to the reference table were taken over
    tables = dict(shop.execute("SELECT relid::regclass::text, method FROM pgfleet.tables WHERE relid::regclass::text "
                               "LIKE 'djshop_%' ORDER BY 1").fetchall())
    assert tables == {"djshop_country": "reference", "djshop_customer": "hash", "djshop_order": "hash"}
    keys = {r[0] for r in shop.execute("SELECT name FROM pgfleet.foreign_keys WHERE relid::regclass::text LIKE 'djshop_%'")}
    customer_fk = next(k for k in keys if k.startswith("djshop_order_customer_id_") and k.endswith("_fk_djshop_customer_id"))
    assert any(k.startswith("djshop_customer_country_id") for k in keys), keys

    # the models as of 0002, as a data migration sees them; the executor lists the tables with Django's
    # introspection query (obj_description(), pg_table_is_visible()), after which the session still routes
    apps = MigrationExecutor(connection).loader.project_state(("djshop", "0002_distribute")).apps
    country_model, customer_model, order_model = (apps.get_model("djshop", n) for n in ("Country", "Customer", "Order"))
    routed_before = router.context.stats.routed

    gh, fr = country_model.objects.bulk_create([country_model(code="GH", name="Ghana"),
                                                country_model(code="FR", name="France")])
    assert gh.id is not None and fr.id == gh.id + 1  # identity ids, returned by bulk_create
    customers = [customer_model.objects.create(name=f"c{i}", country=gh if i % 2 else fr) for i in range(1, 9)]
    assert [c.id for c in customers] == list(range(customers[0].id, customers[0].id + 8))
    order_model.objects.bulk_create([order_model(customer=c, number=n, reference=f"r{c.id}-{n}", total=Decimal(n * 10))
                                     for c in customers for n in (1, 2, 3)])
    assert order_model.objects.count() == 24
    assert router.context.stats.keys_drawn >= 8  # the customers' ids came from the coordinator's sequence
    first = customers[0]
    rows = list(order_model.objects.select_related("customer__country").filter(customer=first).order_by("number"))
    assert [(o.number, o.customer.name, o.customer.country.code) for o in rows] == [(n, "c1", "GH") for n in (1, 2, 3)]
    assert order_model.objects.filter(customer__country__code="FR").count() == 12  # a join over every shard
    assert order_model.objects.filter(customer=first, number=2).update(total=Decimal("99.50")) == 1
    assert order_model.objects.get(customer=first, number=2).total == Decimal("99.50")
    assert order_model.objects.filter(customer=first).aggregate(s=models.Sum("total"))["s"] == Decimal("139.50")

    with pytest.raises(IntegrityError, match=customer_fk):  # Django's key, on the shard
        order_model.objects.create(customer_id=10**9, number=1, reference="x", total=1)
    with pytest.raises(IntegrityError, match="djshop_order_customer_reference"):  # unique with the key, on the shard
        order_model.objects.create(customer=first, number=9, reference=f"r{first.id}-1", total=1)

    with pytest.raises(RuntimeError), transaction.atomic():  # rolled back: nothing anywhere
        gone = customer_model.objects.create(name="gone", country=gh)
        order_model.objects.create(customer=gone, number=1, reference="g", total=1)
        raise RuntimeError("roll back")
    assert not customer_model.objects.filter(name="gone").exists() and order_model.objects.count() == 24
    with transaction.atomic():  # two customers (on different shards, likely workers) and their orders, one commit
        a = customer_model.objects.create(name="a", country=fr)
        b = customer_model.objects.create(name="b", country=fr)
        order_model.objects.bulk_create([order_model(customer=c, number=1, reference="t", total=5) for c in (a, b)])
    assert order_model.objects.filter(reference="t").count() == 2
    coordinator_before = router.context.stats.coordinator_transactions
    with transaction.atomic():  # a new country (a reference table, identity id) and a customer there, one commit
        gb = country_model.objects.create(code="GB", name="Britain")
        gb_customer = customer_model.objects.create(name="gb1", country=gb)  # the shard's key finds the copy's row
        assert customer_model.objects.select_related("country").get(id=gb_customer.id).country.code == "GB"
    assert customer_model.objects.filter(country__code="GB").count() == 1
    got_first = router.context.stats.rows_got_first
    with transaction.atomic():  # a routed write, then bulk_create (INSERT … SELECT * FROM UNNEST): its rows first
        customer_model.objects.filter(id=gb_customer.id).update(name="gb2")
        order_model.objects.bulk_create([order_model(customer=gb_customer, number=n, reference=f"gb{n}", total=n)
                                         for n in (1, 2)])
    assert router.context.stats.rows_got_first == got_first + 2
    assert order_model.objects.filter(customer=gb_customer).count() == 2
    order_model.objects.filter(customer=gb_customer).delete()
    gb_customer.delete()
    with pytest.raises(RuntimeError), transaction.atomic():  # a routed write, then statements over every shard
        order_model.objects.filter(customer=first, number=1).update(reference="t")  # one shard
        assert order_model.objects.filter(reference="t").count() == 3  # every shard, and it sees the write above
        assert order_model.objects.filter(reference="t").update(total=6) == 3  # every shard, in this transaction
        assert list(order_model.objects.filter(reference="t").order_by("customer_id", "number")
                    .values_list("total", flat=True)) == [6, 6, 6]  # merged by the router
        raise RuntimeError("roll back")
    assert router.context.stats.coordinator_transactions == coordinator_before  # none of it went to the coordinator
    assert order_model.objects.filter(reference="t").count() == 2 and not order_model.objects.filter(total=6).exists()

    customers[1].delete()  # Django's cascade first; the shards' own ON DELETE CASCADE agrees
    assert order_model.objects.count() == 23 and customer_model.objects.count() == 9
    assert order_model.objects.filter(customer_id=customers[1].id).count() == 0
    assert router.context.stats.routed > routed_before  # single-shard statements went straight to a worker

    # Django's own AddField of a foreign key (ADD COLUMN … REFERENCES … DEFERRABLE INITIALLY DEFERRED; SET
    # CONSTRAINTS … IMMEDIATE, in the schema editor's transaction): the router declares it on the shards
    field = models.ForeignKey(country_model, on_delete=models.PROTECT, null=True, related_name="+")
    field.set_attributes_from_name("billing_country")
    with connection.schema_editor() as editor:
        editor.add_field(order_model, field)
    assert shop.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s AND column_name = "
                        "'billing_country_id'", [SCHEMA]).fetchone() == (1,)
    assert shop.execute("SELECT columns, deferral FROM pgfleet.foreign_keys WHERE relid = 'djshop_order'::regclass "
                        "AND columns = '{billing_country_id}'").fetchall() == [(["billing_country_id"],
                                                                                "DEFERRABLE INITIALLY DEFERRED")]
    with pytest.raises(IntegrityError, match="billing_country"), transaction.atomic(), connection.cursor() as cur:
        cur.execute("UPDATE djshop_order SET billing_country_id = %s WHERE customer_id = %s", [10**9, first.id])
    with connection.schema_editor() as editor:  # RemoveField drops the column, and the key with it
        editor.remove_field(order_model, field)

    # 0003: a column, an index, a unique constraint and a foreign key (pgfleet.add_foreign_key) after distribution
    from django.core.management import call_command

    from djshop.models import Country, Customer, Order
    call_command("migrate", "djshop", "0003", verbosity=0)
    connection.close()
    assert Order.objects.filter(customer_id=first.id).update(note="fragile", ship_to=Country.objects.get(code="FR")) == 3
    assert list(Order.objects.filter(note="fragile").values_list("ship_to__code", flat=True).distinct()) == ["FR"]
    with pytest.raises(IntegrityError, match="djshop_order_ship_to_fk"):
        Order.objects.filter(customer_id=first.id, number=1).update(ship_to_id=10**9)
    with pytest.raises(IntegrityError, match="djshop_order_customer_total"):  # 0003's unique constraint, on the shard
        Order.objects.create(customer_id=first.id, number=7, reference="dup", total=Decimal(10))
    assert Customer.objects.filter(name="c3").count() == 1
    indexes = {r[0] for r in shop.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", [SCHEMA])}
    assert "djshop_customer_name_idx" in indexes
    assert {r[0] for r in shop.execute("SELECT name FROM pgfleet.foreign_keys WHERE relid = 'djshop_order'::regclass")} \
        == {customer_fk, "djshop_order_ship_to_fk"}


def test_a_role_with_select_on_one_table(shop: psycopg.Connection[Any]) -> None:
    from django.db import ProgrammingError, connections

    shop.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(SCHEMA), sql.Identifier(READER)))
    shop.execute(sql.SQL("GRANT SELECT ON djshop_customer TO {}").format(sql.Identifier(READER)))
    expected = shop.execute("SELECT count(*) FROM djshop_customer").fetchone()
    with connections["reader"].cursor() as cur:
        cur.execute("SELECT count(*) FROM djshop_customer")
        assert cur.fetchone() == expected
    from djshop.models import Customer, Order
    assert Customer.objects.using("reader").count() == expected[0]  # type: ignore[index]
    with pytest.raises(ProgrammingError, match=r"permission denied for table djshop_order(?!_)"):
        Order.objects.using("reader").count()
    with pytest.raises(ProgrammingError, match=r"permission denied for table djshop_order(?!_)"):
        list(Order.objects.using("reader").filter(customer_id=1).values_list("number"))  # single-shard: routed, refused on the worker
