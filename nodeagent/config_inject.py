"""What a process gets from ConfigMaps and Secrets: its environment and its volume files.

Pure functions over a ``Lookup`` (kind, name) → the object, or None when it
does not exist. Nothing here logs, and no message carries a value: a message
names the object, the key and where it was referred to, for the pod's status
(``ConfigError``) and its Events.

Environment (Kubernetes' rules): every ``envFrom`` source in order (each key
of the object's ``data`` as ``prefix + key``; ConfigMap ``binaryData`` is not
used for variables, as in Kubernetes), then every ``env`` entry in order,
literal or ``valueFrom``, a later one overriding an earlier one. A missing
object or key of an ``optional`` reference leaves the variable out; otherwise
it is a ``ConfigError``. A Secret's value is bytes: it reaches the process
byte for byte (decoded here with ``surrogateescape``, which ``subprocess``
undoes); a value holding a NUL byte cannot be an environment variable and is a
``ConfigError``. Names an ``envFrom`` key would produce that cannot be a
variable (empty, or holding ``=`` or NUL) are skipped and returned, for a
Warning Event.

Volume files: ``project`` turns a volume and its object into ``Payload``
(relative path → bytes and mode): every key as a file named after it, or only
``items`` (key → path, optional per-item mode). ConfigMap files default to mode
0644, Secret files to 0400 (``defaultMode`` overrides). A path must be
relative, without ``.``/``..`` components, and its first component may not
start with ``..`` (the writer's own ``..data`` lives there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mizzen.api.config_refs import CONFIG_MAP, SECRET
from protos import objects_pb2 as pb

Lookup = Callable[[str, str], Any]
"""(kind, name) → the ConfigMap or Secret, or None when missing; may raise ConfigError
(the object cannot be read)."""

CONFIG_MAP_MODE = 0o644
SECRET_MODE = 0o400
MAX_PATH = 4096


class ConfigError(Exception):
    """A reference that cannot be satisfied (yet); the message names it, never a value."""


@dataclass(frozen=True)
class FileSpec:
    data: bytes
    mode: int


Payload = dict[str, FileSpec]
"""Path relative to the volume ("a" or "dir/b") → content and mode."""


def describe(kind: str, name: str) -> str:
    return f'{kind} "{name}"'


def valid_env_name(name: str) -> bool:
    return bool(name) and "=" not in name and "\0" not in name


def _env_value(obj: Any, kind: str, key: str) -> str | None:
    """The value of key for a variable; None when the object has no such key."""
    if key not in obj.data:
        return None
    raw = obj.data[key]
    value = raw if kind == CONFIG_MAP else raw.decode("utf-8", "surrogateescape")
    if "\0" in value:
        raise ConfigError(
            f'key "{key}" of {describe(kind, obj.metadata.name)} holds a NUL byte, '
            "which an environment variable cannot"
        )
    return str(value)


def resolve_env(process: pb.Process, lookup: Lookup) -> tuple[list[tuple[str, str]], list[str]]:
    """(variables in order, names skipped as invalid); ConfigError for a missing reference."""
    out: dict[str, str] = {}
    skipped: list[str] = []
    for index, src in enumerate(process.env_from):
        if src.HasField("config_map_ref"):
            kind, name = CONFIG_MAP, src.config_map_ref.name
            optional = src.config_map_ref.optional
        elif src.HasField("secret_ref"):
            kind, name = SECRET, src.secret_ref.name
            optional = src.secret_ref.optional
        else:
            continue
        obj = lookup(kind, name)
        if obj is None:
            if optional:
                continue
            raise ConfigError(f"{describe(kind, name)} not found (envFrom[{index}])")
        for key in sorted(obj.data):
            var = src.prefix + key
            if not valid_env_name(var):
                skipped.append(var)
                continue
            value = _env_value(obj, kind, key)
            if value is not None:
                out[var] = value
    for env in process.env:
        if not env.HasField("value_from"):
            out[env.name] = env.value
            continue
        source = env.value_from
        if source.HasField("config_map_key_ref"):
            kind, ref = CONFIG_MAP, source.config_map_key_ref
        elif source.HasField("secret_key_ref"):
            kind, ref = SECRET, source.secret_key_ref  # type: ignore[assignment]
        else:
            continue
        obj = lookup(kind, ref.name)
        if obj is None:
            if ref.optional:
                continue
            raise ConfigError(f"{describe(kind, ref.name)} not found (env {env.name})")
        value = _env_value(obj, kind, ref.key)
        if value is None:
            if ref.optional:
                continue
            raise ConfigError(
                f'key "{ref.key}" not found in {describe(kind, ref.name)} (env {env.name})'
            )
        out[env.name] = value
    return list(out.items()), skipped


# ----------------------------------------------------------------- volume files


@dataclass(frozen=True)
class VolumeSource:
    """The parts of a pod volume the agent needs, whatever its kind."""

    name: str  # the pod volume's name
    kind: str
    object_name: str
    items: tuple[pb.KeyToPath, ...]
    default_mode: int
    optional: bool


def volume_source(volume: pb.Volume) -> VolumeSource | None:
    """The volume's source, or None for a volume of no kind the agent knows."""
    if volume.HasField("config_map"):
        cm = volume.config_map
        mode = cm.default_mode if cm.HasField("default_mode") else CONFIG_MAP_MODE
        return VolumeSource(volume.name, CONFIG_MAP, cm.name, tuple(cm.items), mode, cm.optional)
    if volume.HasField("secret"):
        s = volume.secret
        mode = s.default_mode if s.HasField("default_mode") else SECRET_MODE
        return VolumeSource(volume.name, SECRET, s.secret_name, tuple(s.items), mode, s.optional)
    return None


def check_file_path(path: str) -> str | None:
    """None when path may name a file inside a volume; else why not."""
    if not path:
        return "empty"
    if len(path) > MAX_PATH or "\0" in path:
        return "too long or holds a NUL byte"
    if path.startswith("/"):
        return "must be relative"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return 'must not have empty, "." or ".." components'
    if parts[0].startswith(".."):
        return 'must not start with ".."'
    return None


def _check_mode(mode: int, what: str) -> int:
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"{what}: mode {mode:#o} is not between 0 and 0777")
    return mode


def project(source: VolumeSource, obj: Any) -> Payload:
    """The files source shows for obj (None: missing); ConfigError when it cannot be shown."""
    where = f"volume {source.name}"
    if obj is None:
        if source.optional:
            return {}
        raise ConfigError(f"{describe(source.kind, source.object_name)} not found ({where})")
    content: dict[str, bytes] = {}
    if source.kind == CONFIG_MAP:
        content.update((k, v.encode()) for k, v in obj.data.items())
        content.update(obj.binary_data.items())
    else:
        content.update(obj.data.items())
    default = _check_mode(source.default_mode, f"{where} defaultMode")
    chosen: list[tuple[str, bytes, int]] = []
    if source.items:
        for item in source.items:
            if item.key not in content:
                if source.optional:
                    continue
                raise ConfigError(
                    f'key "{item.key}" not found in '
                    f"{describe(source.kind, source.object_name)} ({where})"
                )
            mode = item.mode if item.HasField("mode") else default
            chosen.append((item.path, content[item.key], _check_mode(mode, f"{where} {item.path}")))
    else:
        chosen = [(key, content[key], default) for key in sorted(content)]
    payload: Payload = {}
    for path, data, mode in chosen:
        why = check_file_path(path)
        if why is not None:
            raise ConfigError(f'{where}: file path "{path}" is invalid: {why}')
        if path in payload:
            raise ConfigError(f'{where}: two items have the path "{path}"')
        payload[path] = FileSpec(data, mode)
    _check_no_clash(payload, where)
    return payload


def _check_no_clash(payload: Payload, where: str) -> None:
    """No path may also be a directory of another (``a`` and ``a/b``)."""
    dirs: set[str] = set()
    for path in payload:
        parts = path.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = sorted(dirs & payload.keys())
    if clash:
        raise ConfigError(f'{where}: "{clash[0]}" is both a file and a directory')
