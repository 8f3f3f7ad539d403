"""Mizzen: what users import and run (CLI, client SDK, shared config)."""

__version__ = "0.1.0"
