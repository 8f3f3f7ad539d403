"""Service discovery for Python programs: ``resolve`` and ``watch_endpoints``.

    from mizzen.client import resolve, watch_endpoints

    hosts = await resolve("db")                  # [("10.0.0.5", 20417), ...]
    async for hosts in watch_endpoints("db"):    # now, then at every change
        pool.reset(hosts)

Both give the ready endpoints of one port of a Service (its first port, or
the one named ``port``) as ``(host, port)`` pairs, sorted. Where from:

* **inside a pod** (no ``client``): the live file the node agent keeps,
  ``$MIZZEN_POD_DIR/services/<service>.json`` — no credentials needed, only
  Services of the pod's own namespace (``$MIZZEN_POD_NAMESPACE``);
  ``watch_endpoints`` looks at the file every ``poll_interval`` seconds (a
  ``stat``; the agent replaces the file by a rename, so a change is a new
  inode) and reads it only when it changed;
* **with an ObjectsClient** (``client=``): the Service's Endpoints object in
  the store (any namespace the caller may read); ``watch_endpoints`` watches
  it (no polling).

A Service that does not exist raises ``NotFoundError``; one with no ready pod
gives ``[]``. The pure helpers (``Endpoint``, ``endpoints_of``, ``host_port``)
are shared with the node agent.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from mizzen.client.errors import CompactedError, NotFoundError
from protos import objects_pb2 as pb

POD_DIR = "MIZZEN_POD_DIR"
POD_NAMESPACE = "MIZZEN_POD_NAMESPACE"
POLL_INTERVAL = 0.2

Address = tuple[str, int]


class DiscoveryError(RuntimeError):
    """Discovery cannot work here (no client and not in a pod, another namespace, a bad file)."""


@dataclass(frozen=True)
class Endpoint:
    """One pod behind a Service: where it is and its port per Service port name."""

    host: str
    ports: tuple[tuple[str, int], ...]
    node: str
    pod: str

    def port(self, name: str) -> int | None:
        return dict(self.ports).get(name)


def host_port(host: str, port: int) -> str:
    """host:port, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host_port(text: str) -> Address:
    """The inverse of host_port."""
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def endpoints_of(ep: pb.Endpoints | None, *, ready: bool = True) -> list[Endpoint]:
    """The pods in ep, ready ones (or the others), sorted by host and ports."""
    if ep is None:
        return []
    out = []
    for subset in ep.subsets:
        ports = tuple((p.name, int(p.port)) for p in subset.ports)
        for address in subset.addresses if ready else subset.not_ready_addresses:
            out.append(Endpoint(address.ip, ports, address.node_name, address.target_ref.name))
    return sorted(out, key=lambda e: (e.host, e.ports, e.pod))


def addresses(ep: pb.Endpoints | None, port_name: str) -> list[Address]:
    """The ready (host, port) pairs of ep for the Service port named port_name."""
    pairs = [(e.host, p) for e in endpoints_of(ep) if (p := e.port(port_name)) is not None]
    return sorted(pairs)


def _port_name(svc: pb.Service, port: str | None) -> str:
    names = [p.name for p in svc.spec.ports]
    if port is None:
        if not names:
            raise DiscoveryError(f"Service {svc.metadata.name} has no ports")
        return names[0]
    if port not in names:
        raise DiscoveryError(f'Service {svc.metadata.name} has no port named "{port}"')
    return port


# ------------------------------------------------------------------ inside a pod


def _pod_file(service: str, namespace: str | None) -> str:
    pod_dir = os.environ.get(POD_DIR)
    if not pod_dir:
        raise DiscoveryError(
            f"cannot resolve {service}: no client given and not in a pod (${POD_DIR} is not set)"
        )
    own = os.environ.get(POD_NAMESPACE, "")
    if namespace is not None and own and namespace != own:
        raise DiscoveryError(
            f"cannot resolve {service} in namespace {namespace} from a pod of {own}: "
            "the pod's files cover its own namespace only; give a client"
        )
    return os.path.join(pod_dir, "services", f"{service}.json")


def _from_document(doc: Any, service: str, port: str | None) -> list[Address]:
    try:
        ports: dict[str, list[str]] = doc["ports"]
        names = list(ports)
        if port is None:
            if not names:
                raise DiscoveryError(f"Service {service} has no ports")
            port = names[0]
        if port not in ports:
            raise DiscoveryError(f'Service {service} has no port named "{port}"')
        return sorted(parse_host_port(text) for text in ports[port])
    except (KeyError, TypeError, ValueError) as err:
        raise DiscoveryError(f"the endpoints file of {service} is not as expected: {err}") from None


def _read_file(path: str, service: str, port: str | None) -> list[Address]:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        raise NotFoundError(f'services "{service}" not found') from None
    except ValueError as err:
        raise DiscoveryError(f"the endpoints file of {service} is not JSON: {err}") from None
    return _from_document(doc, service, port)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


# ------------------------------------------------------------------ the API


async def resolve(
    service: str,
    namespace: str | None = None,
    *,
    client: Any = None,
    port: str | None = None,
) -> list[Address]:
    """The ready (host, port) endpoints of service now (see the module doc)."""
    if client is None:
        return _read_file(_pod_file(service, namespace), service, port)
    ns = namespace or os.environ.get(POD_NAMESPACE) or "default"
    svc = await client.get("services", service, ns)
    name = _port_name(svc, port)
    try:
        ep = await client.get("endpoints", service, ns)
    except NotFoundError:
        return []
    return addresses(ep, name)


async def watch_endpoints(
    service: str,
    namespace: str | None = None,
    *,
    client: Any = None,
    port: str | None = None,
    poll_interval: float = POLL_INTERVAL,
) -> AsyncIterator[list[Address]]:
    """The ready endpoints now, then again every time they change (see the module doc).

    Inside a pod, a Service deleted later gives ``[]`` (not an error).
    """
    if client is None:
        async for found in _watch_file(service, namespace, port, poll_interval):
            yield found
        return
    async for found in _watch_store(client, service, namespace, port):
        yield found


async def _watch_file(
    service: str, namespace: str | None, port: str | None, poll_interval: float
) -> AsyncIterator[list[Address]]:
    path = _pod_file(service, namespace)
    stamp = _stamp(path)
    last = _read_file(path, service, port)
    yield last
    while True:
        await asyncio.sleep(poll_interval)
        now = _stamp(path)
        if now == stamp:
            continue
        stamp = now
        try:
            found = _read_file(path, service, port) if now is not None else []
        except NotFoundError:
            found = []
        if found != last:
            last = found
            yield found


async def _watch_store(
    client: Any, service: str, namespace: str | None, port: str | None
) -> AsyncIterator[list[Address]]:
    ns = namespace or os.environ.get(POD_NAMESPACE) or "default"
    name = _port_name(await client.get("services", service, ns), port)
    last: list[Address] | None = None
    while True:
        listed = await client.list("endpoints", ns, field_selector=f"metadata.name={service}")
        found = addresses(listed.items[0], name) if listed.items else []
        if found != last:
            last = found
            yield found
        try:
            async for event_type, ep in client.watch(
                "endpoints",
                ns,
                field_selector=f"metadata.name={service}",
                resource_version=listed.resource_version,
            ):
                found = [] if event_type == "DELETED" else addresses(ep, name)
                if found != last:
                    last = found
                    yield found
        except CompactedError:
            continue  # list again


__all__ = [
    "DiscoveryError",
    "Endpoint",
    "addresses",
    "endpoints_of",
    "host_port",
    "parse_host_port",
    "resolve",
    "watch_endpoints",
]
