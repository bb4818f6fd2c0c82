"""A small Django app for tests/test_orm_django.py: a shop whose customers and orders are distributed and
co-located, and whose countries are a reference table. Its migrations distribute through the SQL API."""
