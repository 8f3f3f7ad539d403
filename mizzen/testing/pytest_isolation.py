"""A pytest plugin (``-p mizzen.testing.pytest_isolation`` in pyproject.toml): no client config.

Also turns gRPC's fork support off, as the ``mizzen`` command does, before any
test imports grpc.

The CLI and the daemons read a client config file (``$MIZZEN_CONFIG``, else
``./.mizzen/config``, else ``~/.mizzen/config``). A developer's ``make up`` in
the repository writes ``./.mizzen/config`` with TLS credentials, which would leak
into tests that run commands from the repository root against plaintext test
clusters. Tests that want a config file pass ``MIZZEN_CONFIG`` explicitly.
"""

from __future__ import annotations

import os

os.environ["MIZZEN_CONFIG"] = os.devnull + ".mizzen-tests-use-no-config"
# as `mizzen` does for itself (mizzen/cli/main.py): stores served in a test process fork
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
for _name in ("MIZZEN_ENDPOINTS", "MIZZEN_CACERT", "MIZZEN_CERT", "MIZZEN_KEY", "MIZZEN_TOKEN"):
    os.environ.pop(_name, None)
