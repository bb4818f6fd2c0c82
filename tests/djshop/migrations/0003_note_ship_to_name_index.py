"""After distribution: a column, an index (Django's DDL, propagated to the shards by pgfleet), a unique
constraint (Django's ALTER TABLE … ADD CONSTRAINT … UNIQUE, which the router puts on every shard) and a foreign
key. PostgreSQL refuses ALTER TABLE … ADD FOREIGN KEY on a distributed table (a partitioned table with
foreign partitions), so the column comes without Django's constraint and pgfleet.add_foreign_key puts the
key on the shards."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("djshop", "0002_distribute")]
    operations = [
        migrations.AddField(model_name="order", name="note", field=models.TextField(null=True)),
        migrations.AddField(model_name="order", name="ship_to",
                            field=models.ForeignKey(db_constraint=False, null=True, on_delete=models.PROTECT,
                                                    related_name="+", to="djshop.country")),
        migrations.RunSQL("SELECT pgfleet.add_foreign_key('djshop_order', 'djshop_order_ship_to_fk', ARRAY['ship_to_id'], "
                          "'djshop_country', ARRAY['id'])"),
        migrations.AddIndex(model_name="customer", index=models.Index(fields=["name"], name="djshop_customer_name_idx")),
        # a unique constraint with the distribution key, after distribution: the router adds it on every shard
        migrations.AddConstraint(model_name="order", constraint=models.UniqueConstraint(
            fields=["customer", "total"], name="djshop_order_customer_total")),
    ]
