"""Config rollouts: a keyed content hash of the ConfigMaps and Secrets a pod template uses.

A Deployment or DaemonSet whose pod template refers to ConfigMaps or Secrets
(``mizzen.api.config_refs``) gets a new rollout when the *content* of one of
them changes. The controllers compute ``config_state(template)``: a hash over
the content of every counted reference, written as the pod template
annotation ``mizzen.io/config-hash`` of the ReplicaSet (Deployment) or the pods
(DaemonSet) they create — never into the Deployment's or DaemonSet's own spec.
A different hash is a different template, so the normal rolling update runs.
See docs/controllers.md ("Config rollouts") for the whole design.

What is counted:

* env ``valueFrom`` references count the referenced key only; ``envFrom`` and
  volumes count the whole object (a volume with ``items``: those keys only);
* with ``mizzen.io/config-reload: signal:<NAME>`` on the template, references
  used only as volumes are not counted (the agent rewrites the files and
  signals the processes); env and envFrom ones still are (a process's
  environment cannot change in place);
* a missing object (optional or not) counts as absent: creating it later is a
  change like any other;
* ``mizzen.io/config-rollout: "false"`` on the workload's metadata opts it out
  (``opted_out``): the controllers never start a rollout for a config change,
  but still record the hash on what they create.

The hash is an HMAC-SHA256 with a per-cluster key (``KEY_SECRET``, a Secret the
controllers create on first use), over a canonical JSON of kind, name, counted
keys and the SHA-256 of each value. Pods, and so the annotation, are readable
by viewers and nodes: without the key nobody can test guesses of a value
(a 4-digit PIN has only 10,000), and with it, only who can read Secrets
anyway. ``mizzen.io/config-sources`` records one short keyed digest per object
(``ConfigMap/web=3f9a0c1b2d4e,Secret/db=absent``), which is how ``rollout
history`` and the ConfigChanged Events name *which* object changed.

The controllers' informers cache ConfigMaps and Secrets as digests
(``digested``): every value replaced by its SHA-256, so the controller manager
never keeps configuration, and secret values in particular, in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from mizzen.api.config_refs import CONFIG_MAP, config_refs
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

CONFIG_HASH = "mizzen.io/config-hash"
"""Pod template annotation: the keyed hash of the counted references' content."""
CONFIG_SOURCES = "mizzen.io/config-sources"
"""ReplicaSet / pod annotation: ``Kind/name=digest`` of each counted object, sorted."""
CHANGE_CAUSE = "mizzen.io/change-cause"
"""ReplicaSet annotation shown by ``rollout history``; users may set it on a Deployment."""
CONFIG_ROLLOUT = "mizzen.io/config-rollout"
"""Workload metadata annotation; "false" opts out of config rollouts."""
CONFIG_RELOAD = "mizzen.io/config-reload"
"""Pod template annotation ``signal:<NAME>``: volume-only references reload, not roll."""
CACHED_AS = "mizzen.io/cached-as"
"""Marks an informer's digest-only copy of a ConfigMap or Secret (never stored)."""

KEY_SECRET_NAMESPACE = "mizzen-system"
KEY_SECRET_NAME = "config-hash-key"
KEY_FIELD = "key"
KEY_BYTES = 32
MIN_KEY_BYTES = 16

BY_CONFIG_REF = "by_config_ref"
"""Index of Deployments and DaemonSets: ``Kind/namespace/name`` of every object referred to."""

ABSENT = "absent"
HASH_CHARS = 32  # 128 bits of the HMAC
SOURCE_CHARS = 12  # per-object digests only tell "changed or not"
_DOMAIN = b"mizzen.io/config-hash/v1\0"

Scope = frozenset[str] | None
"""The keys of one object a template counts; None: every key."""


# ------------------------------------------------------------------ references


def ref_value(kind: str, namespace: str, name: str) -> str:
    """A BY_CONFIG_REF index value."""
    return f"{kind}/{namespace}/{name}"


def config_ref_index(workload: Any) -> list[str]:
    """BY_CONFIG_REF values of a Deployment or DaemonSet: every object its template refers to."""
    ns = workload.metadata.namespace
    return sorted({ref_value(r.kind, ns, r.name) for r in config_refs(workload.spec.template.spec)})


def opted_out(workload: Any) -> bool:
    """Whether the workload's metadata says ``mizzen.io/config-rollout: "false"``."""
    return workload.metadata.annotations.get(CONFIG_ROLLOUT, "").strip().lower() == "false"


def reloads(template: pb.PodTemplateSpec) -> bool:
    """Whether the template asks for a signal instead of a restart on volume changes."""
    return template.metadata.annotations.get(CONFIG_RELOAD, "").strip().startswith("signal:")


def counted_refs(template: pb.PodTemplateSpec) -> dict[tuple[str, str], Scope]:
    """(kind, name) -> the keys the hash covers, for every counted reference (module doc)."""
    spec = template.spec
    skip_volumes = reloads(template)
    volumes = {v.name: v for v in spec.volumes}
    keys: dict[tuple[str, str], set[str]] = {}
    whole: set[tuple[str, str]] = set()
    for ref in config_refs(spec):
        target = (ref.kind, ref.name)
        if ref.use == "volume":
            if skip_volumes:
                continue
            vol = volumes.get(ref.volume)
            source = None
            if vol is not None:
                source = vol.config_map if ref.kind == CONFIG_MAP else vol.secret
            if source is not None and len(source.items) > 0:
                keys.setdefault(target, set()).update(item.key for item in source.items)
            else:
                whole.add(target)
        elif ref.use == "env":
            keys.setdefault(target, set()).add(ref.key)
        else:
            whole.add(target)
    out: dict[tuple[str, str], Scope] = {t: None for t in whole}
    for target, ks in keys.items():
        if target not in whole:
            out[target] = frozenset(ks)
    return out


# ------------------------------------------------------------------ content digests


def _sha(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(raw).hexdigest()


def _sections(obj: Any) -> dict[str, Mapping[str, Any]]:
    if isinstance(obj, pb.ConfigMap):
        return {"data": obj.data, "binaryData": obj.binary_data}
    if isinstance(obj, pb.Secret):
        # string_data is write-only (merged into data by the store); count it anyway
        # so an object handed over before that merge hashes the same as after
        merged: dict[str, Any] = dict(obj.data)
        merged.update({k: v.encode() for k, v in obj.string_data.items()})
        return {"data": merged}
    raise TypeError(f"not a ConfigMap or Secret: {type(obj).__name__}")


def content_digests(obj: Any) -> dict[str, dict[str, str]]:
    """section ("data", "binaryData") -> key -> SHA-256 hex of the value.

    Works on a stored object and on its ``digested`` copy alike.
    """
    cached = obj.metadata.annotations.get(CACHED_AS) == "digests"
    out: dict[str, dict[str, str]] = {}
    for section, values in _sections(obj).items():
        if cached:
            out[section] = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
        else:
            out[section] = {k: _sha(v) for k, v in values.items()}
    return out


def digested(obj: Any) -> Any:
    """A copy of a ConfigMap or Secret with every value replaced by its SHA-256 (hex)."""
    if obj.metadata.annotations.get(CACHED_AS) == "digests":
        return obj
    digests = content_digests(obj)
    out = type(obj)()
    out.metadata.CopyFrom(obj.metadata)
    out.metadata.annotations[CACHED_AS] = "digests"
    if obj.HasField("immutable"):
        out.immutable = obj.immutable
    if isinstance(obj, pb.ConfigMap):
        out.data.update(digests["data"])
        out.binary_data.update({k: v.encode() for k, v in digests["binaryData"].items()})
    else:
        out.type = obj.type
        out.data.update({k: v.encode() for k, v in digests["data"].items()})
    return out


def same_content(a: Any, b: Any) -> bool:
    """Whether two versions of a ConfigMap or Secret hold the same data."""
    return content_digests(a) == content_digests(b)


# ------------------------------------------------------------------ the hash


@dataclass(frozen=True)
class ConfigState:
    """What a template's references hold now: the hash ("" when nothing is counted).

    ``sources``: (``Kind/name``, short digest or "absent"), sorted.
    """

    hash: str = ""
    sources: tuple[tuple[str, str], ...] = ()

    def sources_text(self) -> str:
        return ",".join(f"{obj}={digest}" for obj, digest in self.sources)


Lookup = Callable[[str, str, str], Any]
"""(kind, namespace, name) -> the object, or None when there is none."""


def _canonical(kind: str, name: str, scope: Scope, obj: Any) -> bytes:
    content: Any = None
    if obj is not None:
        content = {}
        for section, values in content_digests(obj).items():
            content[section] = {k: v for k, v in values.items() if scope is None or k in scope}
    keys = None if scope is None else sorted(scope)
    doc = [kind, name, keys, content]
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def config_state(
    template: pb.PodTemplateSpec, namespace: str, lookup: Lookup, key: bytes
) -> ConfigState:
    """The hash and per-object digests of the content template's counted references hold."""
    refs = counted_refs(template)
    if not refs:
        return ConfigState()
    whole = hmac.new(key, _DOMAIN, hashlib.sha256)
    sources = []
    for (kind, name), scope in sorted(refs.items()):
        obj = lookup(kind, namespace, name)
        per_object = hmac.new(key, _DOMAIN + _canonical(kind, name, scope, obj), hashlib.sha256)
        digest = per_object.digest()
        whole.update(len(digest).to_bytes(2, "big") + digest)
        label = f"{kind}/{name}"
        sources.append((label, ABSENT if obj is None else digest.hex()[:SOURCE_CHARS]))
    return ConfigState(whole.hexdigest()[:HASH_CHARS], tuple(sources))


def parse_sources(text: str) -> dict[str, str]:
    """``Kind/name`` -> digest, from a CONFIG_SOURCES annotation (malformed parts skipped)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        obj, sep, digest = part.partition("=")
        if sep and obj:
            out[obj] = digest
    return out


def describe_change(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """Which objects referred to by both changed: "ConfigMap web changed, Secret db created"."""
    words = []
    for obj in sorted(set(before) & set(after)):
        old, new = before[obj], after[obj]
        if old == new:
            continue
        verb = "created" if old == ABSENT else "deleted" if new == ABSENT else "changed"
        words.append(f"{obj.replace('/', ' ', 1)} {verb}")
    return ", ".join(words)


def with_config(template: pb.PodTemplateSpec, state: ConfigState) -> pb.PodTemplateSpec:
    """template with the config-hash annotation of state (removed when nothing is counted)."""
    out = pb.PodTemplateSpec()
    out.CopyFrom(template)
    if state.hash:
        out.metadata.annotations[CONFIG_HASH] = state.hash
    else:
        out.metadata.annotations.pop(CONFIG_HASH, None)
    return out


def without_config(template: pb.PodTemplateSpec) -> pb.PodTemplateSpec:
    out = pb.PodTemplateSpec()
    out.CopyFrom(template)
    out.metadata.annotations.pop(CONFIG_HASH, None)
    return out


__all__ = [
    "ABSENT",
    "BY_CONFIG_REF",
    "CHANGE_CAUSE",
    "CONFIG_HASH",
    "CONFIG_RELOAD",
    "CONFIG_ROLLOUT",
    "CONFIG_SOURCES",
    "ConfigState",
    "config_ref_index",
    "config_state",
    "content_digests",
    "counted_refs",
    "describe_change",
    "digested",
    "opted_out",
    "parse_sources",
    "ref_value",
    "reloads",
    "same_content",
    "with_config",
    "without_config",
]
