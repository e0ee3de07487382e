"""Denoisers and metric networks."""
