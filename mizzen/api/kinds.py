"""The registry of kinds: names users type, scope, and the message class.

The CLI resolves ``mizzen get po`` through lookup(); the server uses plural
for storage keys (``/registry/<plural>/<namespace>/<name>``) and namespaced
to decide whether a namespace is required.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from protos import objects_pb2 as pb

API_VERSION = "mizzen/v1"

# Encoded-size caps of the kinds that only ever need kilobytes; every other kind
# is bounded by the store's request limit (1.5 MiB, as etcd). See docs/objects.md.
EVENT_MAX_BYTES = 16 * 1024
LEASE_MAX_BYTES = 16 * 1024
CONFIG_MAX_BYTES = 1024 * 1024  # ConfigMap and Secret, as Kubernetes


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    namespaced: bool
    message: type[Message]
    # Whether the message has a status field (Event and Lease do not).
    has_status: bool = True
    # "subdomain" (up to 253 characters, dots allowed) or "label" (up to 63).
    name_rule: str = "subdomain"
    # Largest encoded object (protobuf bytes) the server accepts; 0: only the
    # store's request limit applies.
    max_bytes: int = 0

    @property
    def has_spec(self) -> bool:
        """Whether the message has a spec (ConfigMap and Secret keep data at the top)."""
        return "spec" in self.message.DESCRIPTOR.fields_by_name

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return API_VERSION


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Node", "nodes", ("no",), namespaced=False, message=pb.Node),
    KindInfo("Pod", "pods", ("po",), namespaced=True, message=pb.Pod),
    KindInfo("ReplicaSet", "replicasets", ("rs",), namespaced=True, message=pb.ReplicaSet),
    KindInfo("Deployment", "deployments", ("deploy",), namespaced=True, message=pb.Deployment),
    KindInfo("DaemonSet", "daemonsets", ("ds",), namespaced=True, message=pb.DaemonSet),
    # A Job's name becomes a label value on its pods, so it must fit 63 characters.
    KindInfo("Job", "jobs", ("job",), namespaced=True, message=pb.Job, name_rule="label"),
    KindInfo(
        "Event",
        "events",
        ("ev",),
        namespaced=True,
        message=pb.Event,
        has_status=False,
        max_bytes=EVENT_MAX_BYTES,
    ),
    KindInfo(
        "Lease",
        "leases",
        ("lease",),
        namespaced=True,
        message=pb.Lease,
        has_status=False,
        max_bytes=LEASE_MAX_BYTES,
    ),
    KindInfo(
        "ConfigMap",
        "configmaps",
        ("cm",),
        namespaced=True,
        message=pb.ConfigMap,
        has_status=False,
        max_bytes=CONFIG_MAX_BYTES,
    ),
    KindInfo(
        "Secret",
        "secrets",
        (),
        namespaced=True,
        message=pb.Secret,
        has_status=False,
        max_bytes=CONFIG_MAX_BYTES,
    ),
    # A Service's name becomes part of environment variable names and a label
    # of DNS names, so it must fit 63 characters.
    KindInfo(
        "Service", "services", ("svc",), namespaced=True, message=pb.Service, name_rule="label"
    ),
    KindInfo(
        "Endpoints",
        "endpoints",
        ("ep",),
        namespaced=True,
        message=pb.Endpoints,
        has_status=False,
        name_rule="label",
    ),
)

_BY_NAME: dict[str, KindInfo] = {}
for _info in KINDS:
    for _alias in (_info.kind, _info.plural, _info.singular, *_info.short_names):
        _BY_NAME[_alias.lower()] = _info
_BY_MESSAGE: dict[str, KindInfo] = {info.message.DESCRIPTOR.full_name: info for info in KINDS}


class UnknownKindError(LookupError):
    """No kind has this name, plural or short name."""


def lookup(name: str) -> KindInfo:
    """The kind for a name as users type it: "Pod", "pods", "pod" or "po" (any case)."""
    info = _BY_NAME.get(name.lower())
    if info is None:
        known = ", ".join(info.plural for info in KINDS)
        raise UnknownKindError(f"unknown kind {name!r}; known kinds: {known}")
    return info


def kind_of(obj: Message) -> KindInfo:
    """The kind of a message instance (or raises UnknownKindError)."""
    info = _BY_MESSAGE.get(obj.DESCRIPTOR.full_name)
    if info is None:
        raise UnknownKindError(f"{obj.DESCRIPTOR.full_name} is not an object kind")
    return info
