"""The agent's local record of the pods it runs, for re-adoption after its own restart.

One JSON file per pod, ``<dir>/<uid>.json``, replaced atomically (write a
temporary file, rename; not fsynced, see ``StateDir``) on every change, so a
``kill -9`` of the agent leaves either the old or the new record, never half
of one. A recorded pid is trusted again only when the boot id, the process
start time (``/proc/<pid>/stat`` field 22) and the cgroup membership all
match (``is_ours`` in ``runtime``): pids are reused, and a pid that is not
ours must never be signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    with open(path) as f:
        return f.read().strip()


def read_start_ticks(pid: int, proc: str = "/proc") -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None if gone."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Terminated:
    """How one run of a process ended (wall-clock seconds)."""

    exit_code: int
    signal: int
    reason: str
    message: str
    started_at: float
    finished_at: float


@dataclass
class ProcessRecord:
    name: str
    restart_count: int = 0
    # The current run; pid 0 when none is running.
    pid: int = 0
    start_ticks: int = 0
    boot_id: str = ""
    cgroup_path: str = ""
    started_at: float = 0.0
    oom_kills_at_start: int = 0
    log_instance: int = 0
    last_terminated: Terminated | None = None
    # Set once the process is finished for good (policy will not restart it).
    final: Terminated | None = None


@dataclass
class PodRecord:
    namespace: str
    name: str
    uid: str
    grace_seconds: int = 30
    processes: dict[str, ProcessRecord] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PodRecord:
        processes: dict[str, ProcessRecord] = {}
        for name, raw in data.get("processes", {}).items():
            raw = dict(raw)
            for key in ("last_terminated", "final"):
                if raw.get(key) is not None:
                    raw[key] = Terminated(**raw[key])
            processes[name] = ProcessRecord(**raw)
        return cls(
            namespace=data["namespace"],
            name=data["name"],
            uid=data["uid"],
            grace_seconds=int(data.get("grace_seconds", 30)),
            processes=processes,
        )


class StateDir:
    """``<root>/<uid>.json`` files; save/remove are atomic (write, then rename).

    Not fsynced, on purpose: the records matter across restarts of the agent
    (a crash or ``kill -9`` loses nothing that reached the page cache), and
    after a host crash or reboot every recorded process is gone anyway — the
    boot id changes and no record can be re-adopted. Fsyncing each save cost
    a third of the agent's time when 200 pods start at once.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, uid: str) -> Path:
        return self.root / f"{uid}.json"

    def save(self, record: PodRecord) -> None:
        target = self.path(record.uid)
        tmp = target.with_suffix(".json.tmp")
        data = json.dumps(record.to_json(), sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def remove(self, uid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(uid))

    def load(self, uid: str) -> PodRecord | None:
        path = self.path(uid)
        try:
            return PodRecord.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("state_unreadable", path=str(path), error=str(err))
            return None

    def load_all(self) -> list[PodRecord]:
        """Every readable record; unreadable ones are logged and skipped (their cgroups remain)."""
        records: list[PodRecord] = []
        for path in sorted(self.root.glob("*.json")):
            try:
                records.append(PodRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("state_unreadable", path=str(path), error=str(err))
        return records
