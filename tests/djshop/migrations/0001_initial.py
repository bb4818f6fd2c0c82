"""Plain Django: the three tables. Django adds foreign keys, unique constraints and indexes at the end of
a migration (its schema editor's deferred SQL), after any RunSQL in it, so distributing is the next
migration's job."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.CreateModel(
            name="Country",
            fields=[
                ("id", models.BigAutoField(primary_key=True)),
                ("code", models.CharField(max_length=2, unique=True)),
                ("name", models.TextField()),
            ],
        ),
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(primary_key=True)),
                ("name", models.TextField()),
                ("country", models.ForeignKey(on_delete=models.PROTECT, to="djshop.country")),
            ],
        ),
        migrations.CreateModel(
            name="Order",
            fields=[
                ("pk", models.CompositePrimaryKey("customer", "number", blank=True, editable=False, primary_key=True,
                                                  serialize=False)),
                ("customer", models.ForeignKey(on_delete=models.CASCADE, to="djshop.customer")),
                ("number", models.IntegerField()),
                ("reference", models.CharField(max_length=20)),
                ("total", models.DecimalField(decimal_places=2, max_digits=10)),
            ],
            options={"constraints": [models.UniqueConstraint(fields=("customer", "reference"),
                                                             name="djshop_order_customer_reference")]},
        ),
    ]
