"""The controller manager's configuration: one object for the manager and its controllers.

Its own module so that every controller can name it without importing the
manager, which imports every controller.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from controllers.leader import DEFAULT_KEY
from mizzen.security.tls import ClientCredentials, ServerTLS

WARM_KINDS = (
    "pods",
    "nodes",
    "replicasets",
    "deployments",
    "daemonsets",
    "jobs",
    "leases",
    "configmaps",  # cached as digests: config rollouts (controllers.confighash)
    "secrets",
    "services",  # the endpoints controller
    "endpoints",
)


def default_identity() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class ManagerConfig:
    """Everything the controller manager and its controllers are configured with."""

    endpoints: list[str] = field(default_factory=lambda: ["127.0.0.1:2379"])
    credentials: ClientCredentials | None = None
    id: str = field(default_factory=default_identity)
    election_key: str = DEFAULT_KEY
    # Seconds; the store's lease TTL is whole seconds (rounded up).
    lease_ttl: float = 2.0
    # How often the leader confirms by a read that it still holds the election key.
    renew_interval: float = 1.0
    # Seconds between re-enqueues of every object of each controller's primary kind.
    resync: float = 30.0
    node_grace: float = 5.0
    eviction_timeout: float = 10.0
    event_ttl: float = 3600.0
    request_timeout: float = 5.0
    # In-flight reconciles get this long to finish when leadership ends.
    stop_grace: float = 0.5
    # Workers per controller name, overriding the controller's own default.
    workers: dict[str, int] = field(default_factory=dict)
    # Controller names to run; None runs every registered controller.
    enabled: tuple[str, ...] | None = None
    warm_kinds: tuple[str, ...] = WARM_KINDS
    # Free-form options for individual controllers (name -> value).
    options: dict[str, Any] = field(default_factory=dict)
    # host:port for Prometheus /metrics and /healthz over HTTP; "" disables it.
    # With a client certificate in credentials, served over HTTPS with it.
    metrics_listen: str = ""

    def metrics_tls(self) -> ServerTLS | None:
        creds = self.credentials
        if creds is None or not (creds.cacert and creds.cert and creds.key):
            return None
        return ServerTLS(creds.cacert, creds.cert, creds.key)
