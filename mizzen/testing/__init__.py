"""Helpers for tests and benchmarks: real multi-process clusters on loopback."""

from mizzen.testing.local_cluster import (
    ClusterError,
    EtcdCluster,
    LocalCluster,
    MizzenCluster,
    free_ports,
)

__all__ = ["ClusterError", "EtcdCluster", "LocalCluster", "MizzenCluster", "free_ports"]
