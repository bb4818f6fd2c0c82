"""The shop's models in their final state (after migration 0003). ``Order`` is co-located with ``Customer``
on the customer's id: its primary key and its unique constraint include that key, as a distributed table's
must. ``Order.customer`` is Django's own key, created with the tables in 0001 and taken to the shards when
0002 distributes both in its transaction; ``ship_to`` (0003) shows the other way, a key declared without
Django's constraint (``db_constraint=False``) and added by ``pgfleet.add_foreign_key``."""

from __future__ import annotations

from django.db import models


class Country(models.Model):
    id = models.BigAutoField(primary_key=True)
    code = models.CharField(max_length=2, unique=True)
    name = models.TextField()

    class Meta:
        app_label = "djshop"


class Customer(models.Model):
    id = models.BigAutoField(primary_key=True)
    name = models.TextField()
    country = models.ForeignKey(Country, on_delete=models.PROTECT)

    class Meta:
        app_label = "djshop"
        indexes = [models.Index(fields=["name"], name="djshop_customer_name_idx")]


class Order(models.Model):
    pk = models.CompositePrimaryKey("customer", "number")
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    number = models.IntegerField()
    reference = models.CharField(max_length=20)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    note = models.TextField(null=True)
    ship_to = models.ForeignKey(Country, on_delete=models.PROTECT, null=True, db_constraint=False, related_name="+")

    class Meta:
        app_label = "djshop"
        constraints = [models.UniqueConstraint(fields=["customer", "reference"], name="djshop_order_customer_reference"),
                       models.UniqueConstraint(fields=["customer", "total"], name="djshop_order_customer_total")]
