"""Fixtures shared by integration test modules."""

from etcd_differential import pair

__all__ = ["pair"]
