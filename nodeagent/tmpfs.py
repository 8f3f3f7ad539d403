"""Where Secret volumes live: a tmpfs the agent mounts at ``<data-dir>/secrets``.

Secret files must not reach a disk. The first Secret volume the agent writes
mounts a tmpfs there (``mount -t tmpfs -o mode=0711,nosuid,nodev,noexec``;
it uses memory only for what it holds), or finds the one a previous agent
mounted (``/proc/self/mountinfo``) and keeps using it: the volumes of pods
that kept running across an agent restart are there. When mounting fails (no
``CAP_SYS_ADMIN``, no ``mount``), the directory stays on disk and
``secret_volumes_on_disk`` is logged with the reason. ``mizzen up``'s agent
(``--stop-pods-on-exit``) unmounts it when it exits; a production agent leaves
it mounted for its pods, as the kubelet leaves its tmpfs volumes.
"""

from __future__ import annotations

import os
import subprocess
import threading

import structlog

from nodeagent.volumes import make_dir

log = structlog.get_logger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
MOUNT_OPTIONS = "mode=0711,nosuid,nodev,noexec"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_fstype(path: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The file system type mounted exactly at path (the last mount wins), or None."""
    target = os.path.realpath(path)
    found: str | None = None
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        if _unescape(fields[4]) == target:
            found = right.split()[0] if right.split() else None
    return found


class SecretsRoot:
    """The tmpfs for Secret volumes, mounted on first use (thread-safe)."""

    def __init__(self, path: str, *, mountinfo: str = MOUNTINFO) -> None:
        self.path = path
        self.mountinfo = mountinfo
        self.on_tmpfs = False
        self._ready = False
        self._lock = threading.Lock()

    def ensure(self) -> str:
        """The directory, mounted (or found mounted) as tmpfs when possible."""
        with self._lock:
            if self._ready:
                return self.path
            make_dir(self.path, 0o711)
            if mount_fstype(self.path, self.mountinfo) == "tmpfs":
                self.on_tmpfs = True
            else:
                self.on_tmpfs = self._mount()
            make_dir(self.path, 0o711)
            self._ready = True
            return self.path

    def _mount(self) -> bool:
        argv = ["mount", "-t", "tmpfs", "-o", MOUNT_OPTIONS, "mizzen-secrets", self.path]
        try:
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            reason = detail.decode(errors="replace").strip() or str(err)
            log.warning("secret_volumes_on_disk", path=self.path, reason=reason)
            return False
        log.info("secret_tmpfs_mounted", path=self.path)
        return True

    def unmount(self) -> None:
        """Unmount the tmpfs if it is mounted (its contents are gone with it)."""
        with self._lock:
            self._ready = False
            if mount_fstype(self.path, self.mountinfo) != "tmpfs":
                return
            try:
                subprocess.run(["umount", self.path], check=True, capture_output=True, timeout=30)
                log.info("secret_tmpfs_unmounted", path=self.path)
            except (OSError, subprocess.SubprocessError) as err:
                log.warning("secret_tmpfs_unmount_failed", path=self.path, error=str(err))
