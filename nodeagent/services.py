"""Service discovery for a node's processes: variables at start and live files (issue 17).

No overlay network and no virtual IPs: a process finds the pods behind a
Service of its namespace from their Endpoints (the endpoints controller keeps
one per Service: node address + host port of every ready pod). The agent
gives it two views:

* **variables at each start** (``service_env``), for every Service of the
  pod's namespace, with ``SVC`` the Service's name upper-cased and ``-`` → ``_``:

  - ``SVC_SERVICE_ENDPOINTS=host:port,host:port`` — the ready endpoints of the
    Service's first port (empty when there is none);
  - ``SVC_SERVICE_HOST`` / ``SVC_SERVICE_PORT`` — one ready endpoint, the same
    for every start of one pod, spread over the endpoints across pods (a hash
    of pod uid and Service); absent when none is ready;
  - with several Service ports, also ``SVC_SERVICE_PORT_<PORTNAME>`` (same
    endpoint, each named port).

  The pod's own variables win over these. They never change in a running
  process (a restart computes them again); for changes, use the file.

* **a live file per Service**, ``$MIZZEN_POD_DIR/services/<name>.json``,
  rewritten atomically (a new file renamed over the old) whenever the
  Service or its Endpoints change, removed when the Service is deleted
  (``service_document`` gives its shape)::

      {"service": "db", "namespace": "default",
       "ports": {"http": ["10.0.0.5:20417", "10.0.0.6:20001"]},
       "endpoints": [{"host": "10.0.0.5", "node": "n1", "pod": "db-7x2kq",
                      "ports": {"http": 20417}}, ...],
       "notReady": [...the same, for pods not ready...]}

  ``ports`` maps each Service port's name ("" for an unnamed single port), in
  the Service's order, to its ready ``host:port`` endpoints; ``endpoints`` and
  ``notReady`` list pods. ``mizzen.client.resolve`` / ``watch_endpoints`` read
  it for Python programs.

How: ``ServiceDirectory`` (one per agent) follows each namespace its pods run
in once, however many pods: an Informer (list, then watch) of the namespace's
Services and one of its Endpoints — exactly the calls the store's node
authorizer allows a node for namespaces where a pod is bound to it — and
keeps ``<data-dir>/services/<namespace>/`` current. Each pod's
``$MIZZEN_POD_DIR/services`` is a symlink to that directory (agent-owned, so
no process can swap the files). A namespace is no longer followed, and its
directory removed, once no pod of it runs here.

A start waits for the namespace's first list (up to ``SYNC_TIMEOUT``; once
that has passed without an answer, later starts do not wait, and processes
start without these variables: the agent logs ``services_unavailable``). A
pod whose ``dependsOn`` names a Service (its dependencies are met once the
Service has a ready endpoint) also waits, up to ``DEPENDENCY_WAIT``, until
this agent's copy shows one, so its variables name it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog

from mizzen.client.informer import Informer
from mizzen.client.services import Endpoint, endpoints_of, host_port
from nodeagent.config_inject import ConfigError
from nodeagent.volumes import ensure_link, make_dir
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)

SYNC_TIMEOUT = 10.0
DEPENDENCY_WAIT = 5.0
LINK_NAME = "services"


# ------------------------------------------------------------------ pure helpers


def env_prefix(service: str) -> str:
    """SVC of ``SVC_SERVICE_...``: the name upper-cased, ``-`` → ``_``."""
    return service.upper().replace("-", "_")


def _pick(endpoints: Sequence[Endpoint], pod_uid: str, service: str) -> Endpoint:
    """One endpoint for a pod: stable for the pod, spread across pods."""
    return endpoints[zlib.crc32(f"{pod_uid}/{service}".encode()) % len(endpoints)]


def service_env(
    services: Iterable[pb.Service], endpoints: Mapping[str, pb.Endpoints], pod_uid: str
) -> list[tuple[str, str]]:
    """The discovery variables for a process of pod pod_uid (see the module doc)."""
    out: list[tuple[str, str]] = []
    for svc in sorted(services, key=lambda s: s.metadata.name):
        name = svc.metadata.name
        prefix = env_prefix(name)
        ports = list(svc.spec.ports)
        first = ports[0].name if ports else ""
        ready = endpoints_of(endpoints.get(name)) if ports else []
        usable = [e for e in ready if e.port(first) is not None]
        joined = ",".join(host_port(e.host, e.port(first) or 0) for e in usable)
        out.append((f"{prefix}_SERVICE_ENDPOINTS", joined))
        if not usable:
            continue
        chosen = _pick(usable, pod_uid, name)
        out.append((f"{prefix}_SERVICE_HOST", chosen.host))
        out.append((f"{prefix}_SERVICE_PORT", str(chosen.port(first))))
        if len(ports) > 1:
            for port in ports:
                number = chosen.port(port.name)
                if port.name and number is not None:
                    out.append((f"{prefix}_SERVICE_PORT_{env_prefix(port.name)}", str(number)))
    return out


def _entry(e: Endpoint) -> dict[str, Any]:
    return {"host": e.host, "node": e.node, "pod": e.pod, "ports": dict(e.ports)}


def service_document(svc: pb.Service, ep: pb.Endpoints | None) -> dict[str, Any]:
    """The live file's content for svc (see the module doc)."""
    ready = endpoints_of(ep)
    ports: dict[str, list[str]] = {}
    for port in svc.spec.ports:
        ports[port.name] = [
            host_port(e.host, number) for e in ready if (number := e.port(port.name)) is not None
        ]
    return {
        "service": svc.metadata.name,
        "namespace": svc.metadata.namespace,
        "ports": ports,
        "endpoints": [_entry(e) for e in ready],
        "notReady": [_entry(e) for e in endpoints_of(ep, ready=False)],
    }


def encode_document(doc: Mapping[str, Any]) -> bytes:
    """JSON, keys in the document's order (``ports`` in the Service's order)."""
    return (json.dumps(doc, indent=1) + "\n").encode()


def write_atomically(directory: str, name: str, data: bytes) -> None:
    """directory/name holds data, replaced in one rename (readers see old or new, whole)."""
    tmp = os.path.join(directory, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))


# ------------------------------------------------------------------ one namespace


class NamespaceServices:
    """The Services and Endpoints of one namespace, followed for every pod of it here."""

    def __init__(self, client: Any, namespace: str, root: str) -> None:
        self.namespace = namespace
        self.dir = os.path.join(root, namespace) if root else ""
        self.services = Informer(client, "services", namespace=namespace)
        self.endpoints = Informer(client, "endpoints", namespace=namespace)
        for informer in (self.services, self.endpoints):
            informer.on_add(self._changed)
            informer.on_update(lambda _old, _new: self._changed())
            informer.on_delete(self._changed)
        self.users = 0
        self.version = 0
        self._change = asyncio.Event()
        self._written: dict[str, bytes] = {}
        self._flush_pending = False
        self._timed_out = False
        self._stopped = False
        self.task: asyncio.Task[None] | None = None
        self._log = log.bind(namespace=namespace)

    @property
    def synced(self) -> bool:
        return self.services.has_synced.is_set() and self.endpoints.has_synced.is_set()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"services-{self.namespace}"
        )

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.services.run())
            tg.create_task(self.endpoints.run())
            await self.services.has_synced.wait()
            await self.endpoints.has_synced.wait()
            self._changed()  # files of an empty namespace, or of Services deleted meanwhile

    async def stop(self) -> None:
        """Stop following (the directory stays: ``ServiceDirectory`` decides)."""
        self._stopped = True
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    # -- changes ---------------------------------------------------------------------

    def _changed(self, *_: Any) -> None:
        self.version += 1
        change, self._change = self._change, asyncio.Event()
        change.set()
        if self.dir and not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _wait_change(self, version: int) -> None:
        while self.version == version:
            await self._change.wait()

    async def wait_synced(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Whether the first lists arrived; waits once per namespace, up to timeout."""
        if self.synced:
            return True
        if self._timed_out:
            return False
        try:
            async with asyncio.timeout(timeout):
                await self.services.has_synced.wait()
                await self.endpoints.has_synced.wait()
        except TimeoutError:
            self._timed_out = True
            self._log.warning("services_unavailable", waited=timeout)
            return False
        return True

    def ready_count(self, service: str) -> int:
        return len(endpoints_of(self.endpoints.get(self.namespace, service)))

    async def wait_ready(self, services: Iterable[str], timeout: float = DEPENDENCY_WAIT) -> None:
        """Wait until every named Service has a ready endpoint here, or timeout passed."""
        names = sorted(set(services))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    version = self.version
                    if all(self.ready_count(n) > 0 for n in names):
                        return
                    await self._wait_change(version)

    def env(self, pod_uid: str) -> list[tuple[str, str]]:
        endpoints = {e.metadata.name: e for e in self.endpoints.list()}
        return service_env(self.services.list(), endpoints, pod_uid)

    # -- files -----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_pending = False
        if not self.synced or not self.dir or self._stopped:
            return
        try:
            self.write_files()
        except OSError as err:
            self._log.error("service_files_failed", error=str(err))

    def write_files(self) -> list[str]:
        """Rewrite the files whose content changed, remove those of deleted Services;
        the names written."""
        make_dir(os.path.dirname(self.dir), 0o755)
        make_dir(self.dir, 0o755)
        wanted: dict[str, bytes] = {}
        for svc in self.services.list():
            ep = self.endpoints.get(self.namespace, svc.metadata.name)
            wanted[f"{svc.metadata.name}.json"] = encode_document(service_document(svc, ep))
        written = []
        for name, data in sorted(wanted.items()):
            if self._written.get(name) != data:
                write_atomically(self.dir, name, data)
                self._written[name] = data
                written.append(name)
        for name in os.listdir(self.dir):
            if name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.dir, name))
                self._written.pop(name, None)
        if written:
            self._log.debug("service_files_written", files=written)
        return written


# ------------------------------------------------------------------ the node


class ServiceDirectory:
    """Every namespace the node's pods run in, each followed once (see the module doc)."""

    def __init__(self, client: Any, root: str = "") -> None:
        self.client = client
        self.root = root
        self.entries: dict[str, NamespaceServices] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def follow(self, namespace: str) -> NamespaceServices:
        entry = self.entries.get(namespace)
        if entry is None:
            entry = self.entries[namespace] = NamespaceServices(self.client, namespace, self.root)
            entry.start()
            log.info("services_follow", namespace=namespace)
        entry.users += 1
        return entry

    def release(self, entry: NamespaceServices) -> None:
        entry.users -= 1
        if entry.users > 0 or self.entries.get(entry.namespace) is not entry:
            return
        del self.entries[entry.namespace]
        task = asyncio.get_running_loop().create_task(self._retire(entry))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("services_unfollow", namespace=entry.namespace)

    async def _retire(self, entry: NamespaceServices) -> None:
        await entry.stop()
        if entry.dir and entry.namespace not in self.entries:
            # on the loop, so a pod of the namespace starting meanwhile (it follows the
            # namespace again first, on the loop) never finds its directory removed
            shutil.rmtree(entry.dir, ignore_errors=True)

    def remove_unused(self) -> list[str]:
        """Remove the directories of namespaces nobody follows (blocking); the namespaces."""
        try:
            names = os.listdir(self.root) if self.root else []
        except OSError:
            return []
        gone = [n for n in names if n not in self.entries]
        for name in gone:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        return gone

    async def close(self) -> None:
        entries = list(self.entries.values())
        self.entries.clear()
        await asyncio.gather(*(e.stop() for e in entries), *self._retiring, return_exceptions=True)


# ------------------------------------------------------------------ one pod


class PodServices:
    """One pod's view: its namespace followed, its link, the variables of its processes."""

    def __init__(self, directory: ServiceDirectory | None, pod: pb.Pod) -> None:
        self.directory = directory
        self.namespace = pod.metadata.namespace
        self.uid = pod.metadata.uid
        self.depends_on = sorted({d.service for d in pod.spec.depends_on if d.service})
        self.entry: NamespaceServices | None = None
        self._log = log.bind(pod=f"{pod.metadata.namespace}/{pod.metadata.name}")

    def start(self) -> None:
        if self.directory is not None and self.entry is None:
            self.entry = self.directory.follow(self.namespace)

    def close(self) -> None:
        if self.directory is not None and self.entry is not None:
            self.directory.release(self.entry)
        self.entry = None

    def link(self, pod_dir: str) -> None:
        """``$MIZZEN_POD_DIR/services`` → the namespace's directory (blocking)."""
        entry = self.entry
        if not pod_dir or entry is None or not entry.dir:
            return
        try:
            make_dir(os.path.dirname(entry.dir), 0o755)
            make_dir(entry.dir, 0o755)
            ensure_link(pod_dir, os.path.join(pod_dir, LINK_NAME), entry.dir)
        except (OSError, ConfigError) as err:
            self._log.warning("service_files_link_failed", error=str(err))

    async def env(self) -> list[tuple[str, str]]:
        """The discovery variables for a process starting now (see the module doc)."""
        entry = self.entry
        if entry is None or not await entry.wait_synced():
            return []
        if self.depends_on:
            await entry.wait_ready(self.depends_on)
        return entry.env(self.uid)
