"""Distribute through pgfleet's SQL API, in the migration's transaction: countries to every worker,
customers by id, orders co-located with them on the customer's id. Django's key from orders to customers
(0001) goes to the shards: distribute_table parks it when customers is distributed and takes it over with
orders, in this transaction (PostgreSQL cannot hold it on the coordinator)."""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("djshop", "0001_initial")]
    operations = [
        migrations.RunSQL("SELECT pgfleet.reference_table('djshop_country')"),
        migrations.RunSQL("SELECT pgfleet.distribute_table('djshop_customer', 'id', shard_count => 4)"),
        migrations.RunSQL("SELECT pgfleet.distribute_table('djshop_order', 'customer_id', colocate_with => 'djshop_customer')"),
    ]
