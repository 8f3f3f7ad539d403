"""Validation of Services and Endpoints (issue 17).

A Service names the pods its ``spec.selector`` picks and the ports clients
reach them on: each ``spec.ports[]`` entry has a ``targetPort`` that is either
a port number (1-65535, used as it is: pods run on their host's network) or
the name of a process port (``processes[].ports[].name``), which the
endpoints controller resolves per pod to its host port (dynamic ports
included). Whether a named targetPort is declared by the selected pods is not
known here (pods come and go): the endpoints controller reports it as the
Service's condition ``TargetPortsResolved``.

Endpoints are written by the endpoints controller (or by hand for a Service
without selector); they are checked for shape only.
"""

from __future__ import annotations

from collections.abc import Sequence

from mizzen.api import names
from mizzen.api.field_errors import FieldErrors
from mizzen.echo import echo
from protos import objects_pb2 as pb

PROTOCOLS = ("TCP", "UDP")
MAX_ADDRESS_BYTES = 253


def target_port_problems(value: str) -> list[str]:
    """Problems with a Service port's targetPort: a number 1-65535 or a port name."""
    if value.isascii() and value.isdigit():
        if str(int(value)) != value:
            return ["a port number must not have leading zeros"]
        if not 1 <= int(value) <= 65535:
            return ["must be between 1 and 65535, inclusive"]
        return []
    what = "must be a port number (1-65535) or the name of a process port"
    return [f"{what}: {p}" for p in names.dns1123_label(value)]


def parse_target_port(value: str) -> int | str:
    """A valid targetPort as a number (int) or a port name (str)."""
    return int(value) if value.isascii() and value.isdigit() else value


def validate_service(svc: pb.Service, errs: FieldErrors) -> None:
    errs.labels(svc.spec.selector, "spec.selector")
    ports = svc.spec.ports
    if not ports:
        errs.add("spec.ports", "at least one port is required")
    seen: set[str] = set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        if port.name:
            errs.each(f"{path}.name", names.dns1123_label(port.name))
            if port.name in seen:
                errs.add(f"{path}.name", f'duplicate port name "{echo(port.name)}"')
            seen.add(port.name)
        elif len(ports) > 1:
            errs.add(f"{path}.name", "required when the Service has more than one port")
        if errs.required(f"{path}.targetPort", port.target_port):
            errs.each(f"{path}.targetPort", target_port_problems(port.target_port))
        errs.enum(f"{path}.protocol", port.protocol, PROTOCOLS)
    errs.conditions(svc.status.conditions, "status.conditions")


def _addresses(addresses: Sequence[pb.EndpointAddress], path: str, errs: FieldErrors) -> None:
    for j, address in enumerate(addresses):
        apath = f"{path}[{j}]"
        if errs.required(f"{apath}.ip", address.ip):
            text = address.ip
            if any(c.isspace() or c == "\0" for c in text):
                errs.add(f"{apath}.ip", "must not contain whitespace or NUL")
            errs.at_most_bytes(f"{apath}.ip", text, MAX_ADDRESS_BYTES)
        if address.node_name:
            errs.each(f"{apath}.nodeName", names.dns1123_subdomain(address.node_name))


def validate_endpoints(ep: pb.Endpoints, errs: FieldErrors) -> None:
    for i, subset in enumerate(ep.subsets):
        path = f"subsets[{i}]"
        _addresses(subset.addresses, f"{path}.addresses", errs)
        _addresses(subset.not_ready_addresses, f"{path}.notReadyAddresses", errs)
        seen: set[str] = set()
        for k, port in enumerate(subset.ports):
            ppath = f"{path}.ports[{k}]"
            errs.port(f"{ppath}.port", port.port)
            if port.name:
                errs.each(f"{ppath}.name", names.dns1123_label(port.name))
                if port.name in seen:
                    errs.add(f"{ppath}.name", f'duplicate port name "{echo(port.name)}"')
                seen.add(port.name)
            elif len(subset.ports) > 1:
                errs.add(f"{ppath}.name", "required when the subset has more than one port")
            errs.enum(f"{ppath}.protocol", port.protocol, PROTOCOLS)
