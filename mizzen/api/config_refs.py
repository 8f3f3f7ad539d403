"""Which ConfigMaps and Secrets a pod spec refers to, and how.

One answer for everyone who needs it: the store's node authorizer (a node may
read only the Secrets its pods refer to), the node agent (what to fetch and
follow before starting a process) and the rollout controllers (what content
a template's hash covers).
"""

from __future__ import annotations

from dataclasses import dataclass

from protos import objects_pb2 as pb

CONFIG_MAP = "ConfigMap"
SECRET = "Secret"


@dataclass(frozen=True, order=True)
class ConfigRef:
    """One reference: the object, how it is used, and whether it may be missing.

    ``use`` is "env" (env[].valueFrom: ``key`` is set), "envFrom" or "volume"
    (``volume`` names the pod volume).
    """

    kind: str  # CONFIG_MAP or SECRET
    name: str
    use: str
    key: str = ""
    volume: str = ""
    optional: bool = False


def config_refs(spec: pb.PodSpec) -> list[ConfigRef]:
    """Every reference in spec, in a stable order (processes, then volumes)."""
    refs: list[ConfigRef] = []
    for proc in spec.processes:
        for env in proc.env:
            if not env.HasField("value_from"):
                continue
            src = env.value_from
            if src.HasField("config_map_key_ref"):
                k = src.config_map_key_ref
                refs.append(ConfigRef(CONFIG_MAP, k.name, "env", k.key, optional=k.optional))
            if src.HasField("secret_key_ref"):
                s = src.secret_key_ref
                refs.append(ConfigRef(SECRET, s.name, "env", s.key, optional=s.optional))
        for env_from in proc.env_from:
            if env_from.HasField("config_map_ref"):
                c = env_from.config_map_ref
                refs.append(ConfigRef(CONFIG_MAP, c.name, "envFrom", optional=c.optional))
            if env_from.HasField("secret_ref"):
                r = env_from.secret_ref
                refs.append(ConfigRef(SECRET, r.name, "envFrom", optional=r.optional))
    for vol in spec.volumes:
        if vol.HasField("config_map"):
            v = vol.config_map
            refs.append(
                ConfigRef(CONFIG_MAP, v.name, "volume", volume=vol.name, optional=v.optional)
            )
        if vol.HasField("secret"):
            sv = vol.secret
            refs.append(
                ConfigRef(SECRET, sv.secret_name, "volume", volume=vol.name, optional=sv.optional)
            )
    return refs


def referenced_names(spec: pb.PodSpec, kind: str) -> set[str]:
    """Names of the objects of kind (CONFIG_MAP or SECRET) spec refers to in any way."""
    return {r.name for r in config_refs(spec) if r.kind == kind}
