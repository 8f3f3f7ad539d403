"""A pod's host ports on this node: the variables that tell processes their ports, and the
check that no other program holds one before the pod starts.

Processes share the host's network, so a port is a host port. The scheduler
assigns dynamic ports (and keeps two pods of a node apart); it cannot know about
programs outside Mizzen, hence ``ports_in_use`` before a pod's first start: a
port another program holds fails the pod (``PortInUse``) instead of letting
its process crash-loop on ``EADDRINUSE``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping

from protos import objects_pb2 as pb

PORT_IN_USE = "PortInUse"


def env_name(port_name: str) -> str:
    """``MIZZEN_PORT_<NAME>``: the port's name upper-cased, ``-`` as ``_``."""
    return "MIZZEN_PORT_" + port_name.upper().replace("-", "_")


def port_env(spec: pb.PodSpec) -> dict[str, str]:
    """The variables every process of the pod gets: ``MIZZEN_PORT_<NAME>`` for each named
    port of the pod (fixed or assigned), and ``PORT`` when the pod has exactly one port."""
    ports = [p for process in spec.processes for p in process.ports if p.port > 0]
    out = {env_name(p.name): str(p.port) for p in ports if p.name}
    if len(ports) == 1:
        out["PORT"] = str(ports[0].port)
    return out


def named_ports(process: pb.Process) -> dict[str, int]:
    """A process's ports by name (what its probes may name)."""
    return {p.name: p.port for p in process.ports if p.name}


def _bindable(kind: int, port: int) -> bool:
    """Whether a socket of kind could bind port on every address, IPv4 and IPv6."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            sock = socket.socket(family, kind)
        except OSError:
            continue  # no IPv6 on this host
        with sock:
            if kind == socket.SOCK_STREAM:
                # connections in TIME_WAIT left by an earlier process are no obstacle
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((host, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return False
                # EADDRNOTAVAIL and the like: that family is not usable here
    return True


def ports_in_use(spec: pb.PodSpec) -> list[str]:
    """One description per port of the pod that another program holds on this host
    (blocking: binds test sockets; run it off the event loop)."""
    out = []
    for process in spec.processes:
        for port in process.ports:
            if port.port <= 0:
                continue
            protocol = port.protocol or "TCP"
            kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
            if not _bindable(kind, port.port):
                what = f"{port.name}, " if port.name else ""
                out.append(
                    f"port {port.port}/{protocol} ({what}process {process.name}) is in use "
                    "on the host by another program"
                )
    return out


def with_port_numbers(probe: pb.Probe, ports: Mapping[str, int]) -> pb.Probe:
    """probe with a port given by name (``port: http``) replaced by its number; a name
    the process does not have is left as port 0 (the probe then fails, saying so)."""
    named = [
        action
        for field in ("tcp_socket", "http_get")
        if probe.HasField(field) and (action := getattr(probe, field)).port_name
    ]
    if not named:
        return probe
    out = pb.Probe()
    out.CopyFrom(probe)
    for field in ("tcp_socket", "http_get"):
        if out.HasField(field):
            action = getattr(out, field)
            if action.port_name:
                action.port = ports.get(action.port_name, 0)
    return out
