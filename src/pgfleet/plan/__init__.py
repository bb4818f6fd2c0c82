"""Wanted × existing → ordered steps (a target node + a composed SQL statement). Pure: no servers."""

from .steps import Step, render

__all__ = ["Step", "render"]
