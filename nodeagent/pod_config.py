"""One pod's configuration: its directory, the variables and volume files of its processes.

``PodConfig`` is owned by the pod worker. It follows (through the node's
shared ``ConfigObjects``) every ConfigMap and Secret the pod refers to
(``config_refs``), and:

* ``prepare(process)`` before each start of a process: waits until every
  object the process refers to has been read once, resolves its environment
  (``config_inject.resolve_env``) and writes the volumes it mounts, with the
  mount symlinks; ``ConfigError`` when a non-optional reference is missing.
  Each start resolves again: a restarted process sees the current values.
* ``sync_loop()``: whenever a followed object changes, rewrites the volume
  copies in use (atomically, ``volumes.AtomicWriter``) and, when the pod
  carries ``mizzen.io/config-reload: signal:<NAME>``, sends that signal to
  each running process that mounts a volume that changed, with an Event.
  An object that disappears, or loses a key, leaves the files as they were.
* ``version`` / ``wait_change``: supervisors waiting in ``ConfigError`` start
  again when an object changes (driven by the watch, no polling).

Layout (all under the agent's data dir, see ``PodPaths``)::

    poddirs/<ns>_<pod>_<uid>/              MIZZEN_POD_DIR; mounts are symlinks in it
    volumes/<uid>/<volume>.<owner-uid>/    a ConfigMap volume for one user
    secrets/<uid>/<volume>.<owner-uid>/    a Secret volume (secrets/ is a tmpfs)

A volume is written once per user among the processes that mount it (its
files are owned by that user), and mounted by a symlink per mount, so two
processes of one user share one copy. The pod directory belongs to the
processes' user when they all run as the same non-root user, else to the
agent (0755).

One file because it is one pod's configuration on disk: the variables and the
volume files of its processes come from the same ConfigMaps and Secrets,
followed and rewritten by the same owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog

from mizzen.api.config_refs import SECRET, config_refs
from nodeagent.config_inject import (
    ConfigError,
    Payload,
    VolumeSource,
    describe,
    project,
    resolve_env,
    volume_source,
)
from nodeagent.config_objects import ConfigObjects, Followed
from nodeagent.launch import LaunchError, RunAs, resolve_user
from nodeagent.tmpfs import SecretsRoot
from nodeagent.volumes import AtomicWriter, check_mounts, ensure_link, make_dir, mount_target
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

RELOAD_ANNOTATION = "mizzen.io/config-reload"
VOLUME_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PodPaths:
    """Where pod directories and volumes live (see the module docstring)."""

    pod_dirs: str
    volumes: str
    secrets: SecretsRoot

    @classmethod
    def under(cls, data_dir: str) -> PodPaths:
        return cls(
            pod_dirs=os.path.join(data_dir, "poddirs"),
            volumes=os.path.join(data_dir, "volumes"),
            secrets=SecretsRoot(os.path.join(data_dir, "secrets")),
        )

    def pod_dir(self, namespace: str, pod: str, uid: str) -> str:
        return os.path.join(self.pod_dirs, f"{namespace}_{pod}_{uid}")

    def remove_pod(self, namespace: str, pod: str, uid: str) -> None:
        """Everything a pod had on disk (blocking)."""
        shutil.rmtree(self.pod_dir(namespace, pod, uid), ignore_errors=True)
        for root in (self.volumes, self.secrets.path):
            shutil.rmtree(os.path.join(root, uid), ignore_errors=True)

    def remove_orphans(self, keep: Iterable[str]) -> list[str]:
        """Remove the directories of every pod uid not in keep; the uids removed."""
        keep = set(keep)
        gone: set[str] = set()
        for root, uid_of in (
            (self.pod_dirs, lambda n: n.rpartition("_")[2]),
            (self.volumes, lambda n: n),
            (self.secrets.path, lambda n: n),
        ):
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for name in names:
                uid = uid_of(name)
                if uid and uid not in keep:
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                    gone.add(uid)
        return sorted(gone)


@dataclass(frozen=True)
class Copy:
    """One written copy of a pod volume: for the processes of one user."""

    volume: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _Mount:
    volume: VolumeSource
    target: str


def reload_signal(annotation: str) -> signal.Signals | None:
    """The signal of ``signal:<NAME>`` (``SIGHUP`` or ``HUP``); None when invalid."""
    kind, _, name = annotation.partition(":")
    if kind.strip() != "signal":
        return None
    name = name.strip().upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        return None


def _owner(run_as: RunAs | None) -> tuple[int, int]:
    return (run_as.uid, run_as.gid) if run_as is not None else (os.geteuid(), os.getegid())


class PodConfig:
    def __init__(
        self,
        pod: pb.Pod,
        objects: ConfigObjects | None,
        paths: PodPaths | None,
        *,
        event: Callable[[str, str, str], None],
        annotations: Callable[[], Any],
        send_signal: Callable[[str, int], bool],
        executor: Executor | None = None,
    ) -> None:
        meta = pod.metadata
        self.namespace = meta.namespace
        self.pod_name = meta.name
        self.uid = meta.uid
        self.spec = pod.spec
        self.objects = objects
        self.paths = paths
        self.pod_dir = paths.pod_dir(meta.namespace, meta.name, meta.uid) if paths else ""
        self._event = event
        self._annotations = annotations
        self._send_signal = send_signal
        self._executor = executor
        self._log = log.bind(pod=f"{meta.namespace}/{meta.name}", uid=meta.uid)
        self.volumes: dict[str, pb.Volume] = {v.name: v for v in pod.spec.volumes}
        self.refs = config_refs(pod.spec)
        self.entries: dict[tuple[str, str], Followed] = {}
        self.version = 0
        self._change = asyncio.Event()
        self._lock = asyncio.Lock()
        # Copies written (or found, for re-adopted processes) → the processes using them.
        self.active: dict[Copy, set[str]] = {}
        self._warned: set[str] = set()
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        """Follow every referenced object (once per object)."""
        if self.objects is None or self.entries or self._closed:
            return
        for ref in self.refs:
            key = (ref.kind, ref.name)
            if key not in self.entries:
                entry = self.objects.follow(ref.kind, self.namespace, ref.name)
                entry.subscribe(self._on_change)
                self.entries[key] = entry

    def close(self) -> None:
        """Stop following (idempotent); files stay until ``remove_files``."""
        if self._closed:
            return
        self._closed = True
        for entry in self.entries.values():
            entry.unsubscribe(self._on_change)
            if self.objects is not None:
                self.objects.release(entry)
        self.entries.clear()
        self._on_change()  # wake anyone waiting: nothing will change any more

    def setup_dir(self, users: Iterable[RunAs | None]) -> None:
        """Create the pod directory (blocking; before any process starts)."""
        if self.paths is None:
            return
        make_dir(self.paths.pod_dirs, 0o711)
        owners = {_owner(u) for u in users}
        uid, gid = owners.pop() if len(owners) == 1 else (os.geteuid(), os.getegid())
        make_dir(self.pod_dir, 0o755, uid, gid)

    def remove_files(self) -> None:
        """Remove the pod directory and volumes (blocking; once every process is gone)."""
        if self.paths is not None:
            self.paths.remove_pod(self.namespace, self.pod_name, self.uid)

    # -- changes ---------------------------------------------------------------------

    def _on_change(self) -> None:
        self.version += 1
        change, self._change = self._change, asyncio.Event()
        change.set()

    async def wait_change(self, version: int) -> None:
        """Return once something changed after version was read."""
        while self.version == version and not self._closed:
            await self._change.wait()

    def _lookup(self, kind: str, name: str) -> Any:
        entry = self.entries.get((kind, name))
        if entry is None:
            if self.objects is None:
                raise ConfigError(f"{describe(kind, name)}: this agent cannot read configuration")
            raise ConfigError(f"{describe(kind, name)} is not followed")
        if entry.obj is None and entry.error:
            raise ConfigError(entry.error)
        return entry.obj

    async def _known(self, keys: Iterable[tuple[str, str]]) -> None:
        for key in keys:
            entry = self.entries.get(key)
            if entry is not None:
                await entry.known.wait()

    # -- a process start -------------------------------------------------------------

    def _process_keys(self, spec: pb.Process) -> set[tuple[str, str]]:
        mounted = {m.name for m in spec.volume_mounts}
        return {
            (r.kind, r.name)
            for r in config_refs(pb.PodSpec(processes=[spec], volumes=self.spec.volumes))
            if r.use != "volume" or r.volume in mounted
        }

    def _mounts(self, spec: pb.Process) -> list[_Mount]:
        if not spec.volume_mounts:
            return []
        if not self.pod_dir:
            raise ConfigError("volume mounts need a pod directory, and this agent has none")
        out: list[_Mount] = []
        targets: dict[str, str] = {}
        for index, mount in enumerate(spec.volume_mounts):
            volume = self.volumes.get(mount.name)
            if volume is None:
                raise ConfigError(f'volumeMounts[{index}]: the pod has no volume "{mount.name}"')
            if not VOLUME_NAME.match(volume.name):
                raise ConfigError(f'volume "{volume.name}": not a valid volume name')
            source = volume_source(volume)
            if source is None:
                raise ConfigError(f'volume "{volume.name}" has no ConfigMap or Secret source')
            target = mount_target(self.pod_dir, spec.working_dir, mount.mount_path)
            targets[f"{mount.name}[{index}]"] = target
            out.append(_Mount(source, target))
        check_mounts(targets)
        return out

    def env_now(self, spec: pb.Process) -> list[tuple[str, str]] | None:
        """The process's variables from what is known now, or None (not all known, or missing)."""
        keys = self._process_keys(spec)
        if any(not self.entries[k].known.is_set() for k in keys if k in self.entries):
            return None
        try:
            return resolve_env(spec, self._lookup)[0]
        except ConfigError:
            return None

    async def prepare(self, spec: pb.Process, run_as: RunAs | None) -> list[tuple[str, str]]:
        """The process's variables, its volumes written and mounted; ConfigError if it cannot."""
        keys = self._process_keys(spec)
        if keys:
            await self._known(keys)
        env, skipped = resolve_env(spec, self._lookup)
        if skipped:
            self._warn(
                "InvalidEnvironmentVariableNames",
                f"process {spec.name}: keys skipped, not valid variable names: "
                + ", ".join(sorted(skipped)),
            )
        mounts = self._mounts(spec)
        if not mounts:
            return env
        uid, gid = _owner(run_as)
        owner = self._pod_dir_owner()
        # The content is read under the lock, and the copies are marked in use before
        # it is released: a change meanwhile is rewritten by the next sync, not lost.
        async with self._lock:
            writes = [
                (m, Copy(m.volume.name, uid, gid), project(m.volume, self._lookup_volume(m.volume)))
                for m in mounts
            ]
            await self._run(self._materialise, writes, owner)
            for _, copy, _payload in writes:
                self.active.setdefault(copy, set()).add(spec.name)
        return env

    def _lookup_volume(self, source: VolumeSource) -> Any:
        return self._lookup(source.kind, source.object_name)

    def _pod_dir_owner(self) -> tuple[int, int]:
        try:
            st = os.stat(self.pod_dir)
        except OSError:
            return -1, -1
        return st.st_uid, st.st_gid

    def copy_path(self, source: VolumeSource, copy: Copy) -> str:
        assert self.paths is not None
        root = self.paths.secrets.path if source.kind == SECRET else self.paths.volumes
        return os.path.join(root, self.uid, f"{copy.volume}.{copy.uid}")

    def _prepare_root(self, source: VolumeSource) -> None:
        assert self.paths is not None
        if source.kind == SECRET:
            root = self.paths.secrets.ensure()
        else:
            root = self.paths.volumes
            make_dir(root, 0o711)
        make_dir(os.path.join(root, self.uid), 0o711)

    def _write(self, source: VolumeSource, copy: Copy, payload: Payload) -> bool:
        """Write one copy (blocking); whether its files changed."""
        self._prepare_root(source)
        mode = 0o750 if source.kind == SECRET else 0o755
        path = self.copy_path(source, copy)
        writer = AtomicWriter(path, uid=copy.uid, gid=copy.gid, dir_mode=mode)
        return writer.write(payload)

    def _materialise(
        self, writes: list[tuple[_Mount, Copy, Payload]], owner: tuple[int, int]
    ) -> None:
        for mount, copy, payload in writes:
            try:
                self._write(mount.volume, copy, payload)
            except OSError as err:
                raise ConfigError(f'volume "{copy.volume}": cannot write: {err.strerror}') from None
            ensure_link(
                self.pod_dir,
                mount.target,
                self.copy_path(mount.volume, copy),
                uid=owner[0],
                gid=owner[1],
            )

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def adopt(self, spec: pb.Process, run_as: RunAs | None) -> None:
        """A re-adopted running process: its volume copies are in use (and kept current)."""
        try:
            mounts = self._mounts(spec)
        except ConfigError:
            return
        uid, gid = _owner(run_as)
        for m in mounts:
            self.active.setdefault(Copy(m.volume.name, uid, gid), set()).add(spec.name)

    # -- keeping volumes current -------------------------------------------------------

    async def sync_loop(self) -> None:
        """Rewrite the copies in use whenever a followed object changes (until cancelled)."""
        await self._known(list(self.entries))
        seen = -1
        while not self._closed:
            if seen == self.version:
                await self.wait_change(seen)
                continue
            seen = self.version
            try:
                await self.sync()
            except Exception:
                self._log.exception("volume_sync_failed")

    async def sync(self) -> list[str]:
        """Rewrite every copy in use whose content changed; the volumes rewritten."""
        async with self._lock:
            changed = await self._sync_locked()
        volumes = sorted({copy.volume for _, copy in changed})
        for source, copy in changed:
            self._log.info(
                "volume_updated", volume=copy.volume, kind=source.kind, object=source.object_name
            )
        if changed:
            self._reload(changed)
        return volumes

    async def _sync_locked(self) -> list[tuple[VolumeSource, Copy]]:
        writes: list[tuple[VolumeSource, Copy, Payload]] = []
        for copy in list(self.active):
            volume = self.volumes.get(copy.volume)
            source = volume_source(volume) if volume is not None else None
            if source is None:
                continue
            try:
                payload = project(source, self._lookup_volume(source))
            except ConfigError as err:
                self._log.warning("volume_not_updated", volume=copy.volume, reason=str(err))
                continue
            writes.append((source, copy, payload))
        if not writes:
            return []
        changed: list[tuple[VolumeSource, Copy]] = await self._run(self._rewrite, writes)
        return changed

    def _rewrite(
        self, writes: list[tuple[VolumeSource, Copy, Payload]]
    ) -> list[tuple[VolumeSource, Copy]]:
        changed = []
        for source, copy, payload in writes:
            try:
                if self._write(source, copy, payload):
                    changed.append((source, copy))
            except OSError as err:
                self._log.error("volume_write_failed", volume=copy.volume, error=err.strerror)
        return changed

    def _reload(self, changed: list[tuple[VolumeSource, Copy]]) -> None:
        annotation = self._annotations().get(RELOAD_ANNOTATION, "")
        if not annotation:
            return
        sig = reload_signal(annotation)
        if sig is None:
            self._warn(
                "InvalidReloadAnnotation",
                f'{RELOAD_ANNOTATION}: "{annotation}" is not signal:<NAME>; no process signalled',
            )
            return
        for source, copy in changed:
            what = f"volume {copy.volume} ({describe(source.kind, source.object_name)}) changed"
            signalled = [
                name for name in sorted(self.active.get(copy, ())) if self._send_signal(name, sig)
            ]
            if signalled:
                self._log.info(
                    "config_reload_signalled",
                    volume=copy.volume,
                    signal=sig.name,
                    processes=signalled,
                )
                self._event(
                    "Normal",
                    "ConfigReload",
                    f"{what}: files rewritten, sent {sig.name} to process " + ", ".join(signalled),
                )

    def _warn(self, reason: str, message: str) -> None:
        if message in self._warned:
            return
        self._warned.add(message)
        self._log.warning("pod_config_warning", reason=reason, message=message)
        self._event("Warning", reason, message)


def run_as_of(spec: pb.Process) -> RunAs | None:
    """The process's user, or None (the agent's, or an unknown user: the start reports it)."""
    with contextlib.suppress(LaunchError):
        return resolve_user(spec.user)
    return None
