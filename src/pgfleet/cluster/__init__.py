"""Composition: the Fleet facade and the local (embedded) cluster."""
