"""Wanted × existing → SQL statements for each node. Pure: no servers; tested on the SQL it renders."""

from .steps import render

__all__ = ["render"]
