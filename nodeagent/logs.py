"""Process log files on the node: where they live, rotation, and reading them back.

Layout under the logs root::

    <root>/<namespace>_<pod>_<uid>/<process>/<restart_count>.log      current chunk
    <root>/<namespace>_<pod>_<uid>/<process>/<restart_count>.log.1    previous chunk
    ...                                                   .log.N     oldest chunk

Every start of a process (an *instance*) writes to its own file named by its
restart count. The child writes its stdout and stderr straight into the file
(O_APPEND), so the agent is not in the data path and a restart of the agent
loses nothing. Size rotation is copytruncate: the chunk is copied to ``.1``
and the file truncated in place, so the child keeps writing to the same fd.
The only bytes copytruncate can lose are those written between the copy and
the truncation.

Namespaces and pod names are DNS labels (no ``_``), so the directory name
splits unambiguously.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from collections.abc import AsyncGenerator, Callable, Sequence

import structlog

log = structlog.get_logger(__name__)

_INSTANCE = re.compile(r"^(\d+)\.log$")
_CHUNK = re.compile(r"^(\d+)\.log(?:\.(\d+))?$")
_READ_SIZE = 65536


class LogNotFound(Exception):
    """No log matches the request; the message says what is missing, for the user."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else "log not found"


class ProcessRequired(LogNotFound):
    """The pod has several processes and none was named; the message lists them."""


def pod_dir_name(namespace: str, pod: str, uid: str) -> str:
    return f"{namespace}_{pod}_{uid}"


def chunk_paths(path: str) -> list[str]:
    """Existing chunks of one instance file, oldest first, ending with path itself."""
    directory, base = os.path.split(path)
    numbered: list[tuple[int, str]] = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(base + ".") and name[len(base) + 1 :].isdigit():
            numbered.append((int(name[len(base) + 1 :]), os.path.join(directory, name)))
    ordered = [p for _, p in sorted(numbered, reverse=True)]
    if os.path.exists(path):
        ordered.append(path)
    return ordered


class PodLogs:
    """The writing side: where the agent points a new process instance's output."""

    def __init__(self, root: str) -> None:
        self.root = root

    def pod_dir(self, namespace: str, pod: str, uid: str) -> str:
        return os.path.join(self.root, pod_dir_name(namespace, pod, uid))

    def process_dir(self, namespace: str, pod: str, uid: str, process: str) -> str:
        return os.path.join(self.pod_dir(namespace, pod, uid), process)

    def instance_path(
        self, namespace: str, pod: str, uid: str, process: str, restart_count: int
    ) -> str:
        return os.path.join(self.process_dir(namespace, pod, uid, process), f"{restart_count}.log")

    def open_instance(
        self, namespace: str, pod: str, uid: str, process: str, restart_count: int
    ) -> int:
        """An fd for the child's stdout and stderr (appending); the caller closes it."""
        os.makedirs(self.process_dir(namespace, pod, uid, process), mode=0o750, exist_ok=True)
        path = self.instance_path(namespace, pod, uid, process, restart_count)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def prune(
        self, namespace: str, pod: str, uid: str, process: str, keep_instances: int = 2
    ) -> None:
        """Delete every file of all but the newest keep_instances instances."""
        directory = self.process_dir(namespace, pod, uid, process)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        by_instance: dict[int, list[str]] = {}
        for name in names:
            m = _CHUNK.match(name)
            if m:
                by_instance.setdefault(int(m.group(1)), []).append(name)
        doomed = sorted(by_instance, reverse=True)[max(keep_instances, 0) :]
        for restart_count in doomed:
            for name in by_instance[restart_count]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
        if doomed:
            log.debug("logs_pruned", pod=f"{namespace}/{pod}", process=process, removed=doomed)

    def remove_pod(self, namespace: str, pod: str, uid: str) -> None:
        """Delete all logs of one pod instance; missing is fine."""
        shutil.rmtree(self.pod_dir(namespace, pod, uid), ignore_errors=True)


def rotate_if_needed(path: str, max_bytes: int, keep: int) -> bool:
    """Rotate path by copytruncate when it holds max_bytes or more; True if it rotated.

    Older chunks shift up (``.1`` -> ``.2`` ...), at most ``keep`` are kept.
    The copy is written to a temporary name and renamed to ``.1`` just before
    the truncation, so a reader that sees a new ``.1`` sees all of it (a
    follower that looks exactly between the rename and the truncation may
    repeat the chunk once).
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return False
    if size < max_bytes:
        return False
    if keep < 1:
        os.truncate(path, 0)
        return True
    for n in range(keep, 0, -1):
        src = f"{path}.{n}"
        if not os.path.exists(src):
            continue
        if n == keep:
            os.unlink(src)
        else:
            os.replace(src, f"{path}.{n + 1}")
    tmp = f"{path}.rotating"
    with open(path, "rb") as src_file, open(tmp, "wb") as dst:
        shutil.copyfileobj(src_file, dst, _READ_SIZE)
        # One more pass shrinks the window for bytes appended during the copy.
        dst.write(src_file.read())
    os.chmod(tmp, 0o640)
    os.replace(tmp, f"{path}.1")
    os.truncate(path, 0)
    return True


# ------------------------------------------------------------------ reading


def _last_lines(data: bytes, lines: int) -> bytes:
    """The last ``lines`` lines of data; an unterminated last line counts as one."""
    if lines < 0:
        return data
    if lines == 0:
        return b""
    pos = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(lines):
        pos = data.rfind(b"\n", 0, pos)
        if pos == -1:
            return data
    return data[pos + 1 :]


def _enough_lines(data: bytes, lines: int) -> bool:
    return data.count(b"\n", 0, len(data) - 1 if data.endswith(b"\n") else len(data)) >= lines


def read_tail(paths: Sequence[str], lines: int) -> tuple[bytes, int]:
    """Like tail, plus how far into the newest file it read (where following starts)."""
    if not paths:
        return b"", 0
    parts: list[bytes] = []
    newest_size = 0
    for i, path in enumerate(reversed(paths)):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        if i == 0:
            newest_size = len(data)
        parts.insert(0, data)
        if lines >= 0 and _enough_lines(b"".join(parts), lines):
            break
    return _last_lines(b"".join(parts), lines), newest_size


def tail(paths: Sequence[str], lines: int) -> bytes:
    """The last ``lines`` lines across paths (oldest to newest); -1 means everything."""
    return read_tail(paths, lines)[0]


def _chunk_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


def _read_range(path: str, start: int, end: int | None = None) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read() if end is None else f.read(max(end - start, 0))
    except FileNotFoundError:
        return b""


async def follow(
    path: str,
    *,
    start_offset: int,
    poll: float = 0.2,
    stop_when: Callable[[], bool] | None = None,
) -> AsyncGenerator[bytes, None]:
    """Yield what is appended to path from start_offset on, until the file disappears.

    Survives copytruncate rotation: when a new ``.1`` chunk appears, the part
    of it not yet read is yielded first, then reading restarts at the top of
    the truncated file. A file shorter than the offset also means it was
    truncated. Ends when path is removed (the pod's logs were deleted), or
    when ``stop_when()`` is true once everything written so far was yielded
    (e.g. the process was restarted into a new instance file).
    """
    offset = start_offset
    rotated = f"{path}.1"
    seen_chunk = _chunk_identity(rotated)
    while True:
        chunk_id = _chunk_identity(rotated)
        if chunk_id is not None and chunk_id != seen_chunk:
            seen_chunk = chunk_id
            missed = _read_range(rotated, offset)
            if missed:
                yield missed
            offset = 0
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            return
        if size < offset:
            offset = 0
        if size > offset:
            data = _read_range(path, offset, min(size, offset + _READ_SIZE * 16))
            if data:
                offset += len(data)
                yield data
                continue
        if stop_when is not None and stop_when():
            return
        await asyncio.sleep(poll)


def has_newer_instance(path: str) -> bool:
    """Whether the process of instance file path was restarted into a higher-numbered file."""
    directory, base = os.path.split(path)
    m = _INSTANCE.match(base)
    if m is None:
        return False
    current = int(m.group(1))
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return False
    return any((n := _INSTANCE.match(name)) and int(n.group(1)) > current for name in names)


class DiskLogSource:
    """The reading side: which files answer a logs request for a pod by name."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _pod_dir(self, namespace: str, pod: str) -> str:
        prefix = f"{namespace}_{pod}_"
        candidates: list[tuple[int, str]] = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if entry.name.startswith(prefix) and "_" not in entry.name[len(prefix) :]:
                try:
                    if entry.is_dir():
                        candidates.append((entry.stat().st_mtime_ns, entry.path))
                except FileNotFoundError:
                    continue
        if not candidates:
            raise LogNotFound(f'no logs for pod "{namespace}/{pod}" on this node')
        return max(candidates)[1]

    def processes(self, namespace: str, pod: str) -> list[str]:
        directory = self._pod_dir(namespace, pod)
        return sorted(e.name for e in os.scandir(directory) if e.is_dir())

    def instance_files(
        self, namespace: str, pod: str, process: str | None, previous: bool
    ) -> list[str]:
        """Chunks (oldest first) of the current or previous instance of a process."""
        pod_dir = self._pod_dir(namespace, pod)
        names = sorted(e.name for e in os.scandir(pod_dir) if e.is_dir())
        where = f'pod "{namespace}/{pod}"'
        if not process:
            if not names:
                raise LogNotFound(f"no logs for {where} on this node")
            if len(names) > 1:
                raise ProcessRequired(
                    f"{where} has {len(names)} processes, name one with -p: {', '.join(names)}"
                )
            process = names[0]
        elif process not in names:
            listed = ", ".join(names) or "none"
            raise LogNotFound(f'process "{process}" not found in {where} (processes: {listed})')
        directory = os.path.join(pod_dir, process)
        counts = sorted(
            int(m.group(1)) for name in os.listdir(directory) if (m := _INSTANCE.match(name))
        )
        if not counts:
            raise LogNotFound(f'no logs for process "{process}" of {where}')
        if previous:
            if len(counts) < 2:
                raise LogNotFound(
                    f'previous instance of process "{process}" in {where} not found '
                    f"(it has not restarted, or its logs were pruned)"
                )
            chosen = counts[-2]
        else:
            chosen = counts[-1]
        return chunk_paths(os.path.join(directory, f"{chosen}.log"))
