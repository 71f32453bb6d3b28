"""Coffre: a territorial medical-imaging archive."""

__version__ = "0.1.0"
