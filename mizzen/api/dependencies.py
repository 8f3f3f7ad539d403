"""Dependencies (``dependsOn``): what one may say, how it is defaulted, validated and read.

A pod's processes start only once every dependency of the pod is met; the
dependencies controller (``controllers/dependencies.py``) decides it and
writes the pod condition ``DependenciesReady``, the node agent waits for it.
One dependency, always in the pod's (or workload's) own namespace, is either

* ``{service: NAME}`` — met when the Service's Endpoints have at least one
  ready address; or
* ``{kind: Deployment, name: NAME, condition: Available}`` — met when the
  Deployment's condition ``Available`` is True; or
* ``{kind: Job, name: NAME, condition: Complete}`` — met when the Job's
  condition ``Complete`` is True.

``condition`` defaults by kind (the only value each kind accepts today).
Deployments, DaemonSets and Jobs carry ``spec.dependsOn``, which their
controllers copy into every pod they create; their pod template may not
carry its own (one place to say it). A ReplicaSet, which has no
``spec.dependsOn``, and a bare Pod say it in the pod spec.

One answer for everyone who reads them: validation, defaulting, the
controllers' indexes (``index_keys``) and the messages of conditions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mizzen.api import names
from mizzen.api.field_errors import FieldErrors
from mizzen.echo import echo
from protos import objects_pb2 as pb

SERVICE = "Service"
DEFAULT_CONDITION = {"Deployment": "Available", "Job": "Complete"}
"""The kinds a dependency may name, each with its (default and only) condition."""
KINDS = tuple(DEFAULT_CONDITION)

CONDITION = "DependenciesReady"
"""The pod (and workload) condition the dependencies controller writes."""
MET = "DependenciesMet"
NOT_READY = "DependenciesNotReady"
"""Reason of a False condition, and of the agent's Waiting processes."""
CYCLE = "DependencyCycle"
"""Reason of a False condition of a workload (and its pods) in a dependency cycle."""
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "Job")
"""The kinds with a ``spec.dependsOn`` of their own."""


@dataclass(frozen=True, order=True)
class Target:
    """What one dependency waits for: kind ("Service", "Deployment", "Job") and name."""

    kind: str
    name: str
    condition: str = ""

    def __str__(self) -> str:
        return f'{self.kind.lower()} "{self.name}"'

    def ref(self) -> str:
        """Kind/name, as in cycle paths (``Service/db``)."""
        return f"{self.kind}/{self.name}"


def target_of(dep: pb.Dependency) -> Target:
    """The dependency's target; condition defaulted by kind."""
    if dep.service:
        return Target(SERVICE, dep.service)
    return Target(dep.kind, dep.name, dep.condition or DEFAULT_CONDITION.get(dep.kind, ""))


def targets(deps: Iterable[pb.Dependency]) -> list[Target]:
    return [target_of(d) for d in deps]


def describe(dep: pb.Dependency) -> str:
    """One dependency for people: ``service db`` / ``Deployment db (Available)``."""
    t = target_of(dep)
    if t.kind == SERVICE:
        return f"service {t.name}"
    return f"{t.kind} {t.name} ({t.condition})" if t.condition else f"{t.kind} {t.name}"


def index_key(namespace: str, target: Target) -> str:
    """The key objects depending on target are indexed under (``Service/ns/db``)."""
    return f"{target.kind}/{namespace}/{target.name}"


def own_dependencies(obj: Any) -> Sequence[pb.Dependency]:
    """The dependencies obj (Pod, ReplicaSet, Deployment, DaemonSet or Job) declares."""
    match obj:
        case pb.Pod():
            return obj.spec.depends_on
        case pb.ReplicaSet():
            return obj.spec.template.spec.depends_on
        case pb.Deployment() | pb.DaemonSet() | pb.Job():
            return obj.spec.depends_on
    return ()


def index_keys(obj: Any) -> list[str]:
    """Index function: every ``index_key`` of the targets obj depends on."""
    namespace = obj.metadata.namespace
    return sorted({index_key(namespace, t) for t in targets(own_dependencies(obj))})


# ---------------------------------------------------------------- defaults


def default_dependencies(deps: Iterable[pb.Dependency]) -> None:
    """Fill each kind+name dependency's condition with its kind's default."""
    for dep in deps:
        if not dep.service and not dep.condition and dep.kind in DEFAULT_CONDITION:
            dep.condition = DEFAULT_CONDITION[dep.kind]


# ---------------------------------------------------------------- validation


def validate_dependencies(deps: Sequence[pb.Dependency], path: str, errs: FieldErrors) -> None:
    """Add the problems of a dependsOn list at path (``spec.dependsOn``)."""
    seen: set[tuple[str, str]] = set()
    for i, dep in enumerate(deps):
        dpath = f"{path}[{i}]"
        if dep.service:
            if dep.kind or dep.name:
                errs.add(dpath, "may not specify kind or name together with service")
            errs.each(f"{dpath}.service", names.dns1123_label(dep.service))
            if dep.condition:
                errs.add(
                    f"{dpath}.condition",
                    "may not be specified with service: a Service dependency is met when "
                    "the Service has a ready endpoint",
                )
        elif dep.kind or dep.name:
            errs.enum(f"{dpath}.kind", dep.kind, KINDS)
            if errs.required(f"{dpath}.name", dep.name):
                errs.each(f"{dpath}.name", names.dns1123_subdomain(dep.name))
            if dep.kind in DEFAULT_CONDITION:
                errs.enum(f"{dpath}.condition", dep.condition, (DEFAULT_CONDITION[dep.kind],))
        else:
            errs.add(dpath, "must specify service, or kind and name")
            continue
        target = target_of(dep)
        key = (target.kind, target.name)
        if key in seen:
            errs.add(dpath, f"duplicate dependency on {echo(str(target))}")
        seen.add(key)


def forbid_template_dependencies(
    kind: str, template: pb.PodTemplateSpec, errs: FieldErrors
) -> None:
    """A workload says dependsOn in its own spec, never in its pod template."""
    if template.spec.depends_on:
        errs.add(
            "spec.template.spec.dependsOn",
            f"may not be set in a {kind}'s pod template: set spec.dependsOn, which the "
            f"{kind} copies into every pod",
        )


__all__ = [
    "CONDITION",
    "CYCLE",
    "DEFAULT_CONDITION",
    "KINDS",
    "MET",
    "NOT_READY",
    "SERVICE",
    "WORKLOAD_KINDS",
    "Target",
    "default_dependencies",
    "describe",
    "forbid_template_dependencies",
    "index_key",
    "index_keys",
    "own_dependencies",
    "target_of",
    "targets",
    "validate_dependencies",
]
