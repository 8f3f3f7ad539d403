"""Volume files on disk: where a mount appears, and the atomic writer that fills a volume.

**Mount paths.** A process's ``volumeMounts[].mountPath`` is resolved against
its pod's directory (``MIZZEN_POD_DIR``): a relative path is relative to the
process's working directory when that lies inside the pod directory, else to
the pod directory; an absolute path must lie inside the pod directory. The
result is normalised lexically and must lie strictly inside the pod directory
(``mount_target``). The mount itself is a symlink at that path to the volume's
directory (``ensure_link``), created by walking from the pod directory one
component at a time with ``O_NOFOLLOW`` directory descriptors: a symlink a
process planted on the way is refused, never followed, so the agent (root)
never creates anything outside the pod directory.

**The writer** (Kubernetes' AtomicWriter, the kubelet's layout)::

    <volume>/..2026_12_07_19_12_31.ab12cd34/   one generation of the files
    <volume>/..data -> ..2026_12_07_19_12_31.ab12cd34
    <volume>/<key>  -> ..data/<key>            one per top-level path

``write(payload)`` compares the payload with the current generation (content,
mode, owner, and nothing else there) and touches nothing when they match;
otherwise it writes a new generation directory, points a temporary symlink
at it and renames that over ``..data`` (one atomic rename: a reader sees the
old files or the new ones, never a mix), adds the top-level symlinks of new
paths, removes those of paths that are gone, and then removes the old
generation. Every step goes through directory descriptors without following
symlinks. The volume directory and its generations are the agent's (group: the
owner's group), so only the agent writes there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable

from nodeagent.config_inject import ConfigError, Payload

DATA_LINK = "..data"
TMP_LINK = "..data_tmp"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _inside(path: str, root: str) -> bool:
    return path != root and os.path.commonpath([path, root]) == root


def mount_target(pod_dir: str, working_dir: str, mount_path: str) -> str:
    """The absolute path where mount_path appears for a process; ConfigError if refused."""
    what = f'mountPath "{mount_path}"'
    if not mount_path or "\0" in mount_path:
        raise ConfigError(f"{what} is empty or holds a NUL byte")
    pod_dir = os.path.normpath(pod_dir)
    if os.path.isabs(mount_path):
        path = os.path.normpath(mount_path)
    else:
        base = pod_dir
        if os.path.isabs(working_dir):
            cwd = os.path.normpath(working_dir)
            if cwd == pod_dir or _inside(cwd, pod_dir):
                base = cwd
        path = os.path.normpath(os.path.join(base, mount_path))
    if not _inside(path, pod_dir):
        raise ConfigError(f"{what} is outside the pod directory")
    return path


def check_mounts(targets: dict[str, str]) -> None:
    """Refuse two mounts of one process at the same path or one inside another."""
    ordered = sorted(targets.items(), key=lambda item: item[1])
    for i, (name_a, a) in enumerate(ordered):
        for name_b, b in ordered[i + 1 :]:
            if a == b or b.startswith(a + "/"):
                raise ConfigError(f'volume mounts "{name_a}" and "{name_b}" overlap at {b}')


def ensure_link(pod_dir: str, target: str, link_to: str, *, uid: int = -1, gid: int = -1) -> None:
    """A symlink at target (inside pod_dir) pointing to link_to; ConfigError if impossible.

    Missing directories on the way are created 0755, owned by uid/gid (-1: the
    agent). An existing symlink to link_to is fine; anything else there is refused.
    """
    rel = os.path.relpath(target, pod_dir)
    parts = rel.split(os.sep)
    where = f"mount at {target}"
    try:
        fd = os.open(pod_dir, DIR_FLAGS)
    except OSError as err:
        raise ConfigError(f"{where}: pod directory: {err.strerror}") from None
    try:
        for part in parts[:-1]:
            created = False
            try:
                os.mkdir(part, 0o700, dir_fd=fd)
                created = True
            except FileExistsError:
                pass
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfigError(f'{where}: "{part}" is not a directory') from None
                raise ConfigError(f'{where}: "{part}": {err.strerror}') from None
            os.close(fd)
            fd = sub
            if created:
                os.fchmod(fd, 0o755)
                os.fchown(fd, uid, gid)
        last = parts[-1]
        try:
            current = os.readlink(last, dir_fd=fd)
        except FileNotFoundError:
            os.symlink(link_to, last, dir_fd=fd)
            return
        except OSError:
            raise ConfigError(f"{where}: something else already exists there") from None
        if current != link_to:
            raise ConfigError(f"{where}: another volume is already mounted there")
    except OSError as err:
        raise ConfigError(f"{where}: {err.strerror}") from None
    finally:
        os.close(fd)


def make_dir(path: str, mode: int, uid: int = -1, gid: int = -1) -> None:
    """mkdir path (parents must exist) with exactly mode and owner; an existing dir is fixed up.

    Refuses a symlink at path (lstat), so a directory the agent prepares is its own.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = os.open(path, DIR_FLAGS)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


class AtomicWriter:
    """Fills one volume directory; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        uid: int,
        gid: int,
        dir_mode: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.uid = uid
        self.gid = gid
        self.dir_mode = dir_mode
        self._clock = clock

    def _generation_name(self) -> str:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime(self._clock()))
        return f"..{stamp}.{secrets.token_hex(4)}"

    def current(self) -> str | None:
        """The generation ``..data`` points to, or None."""
        try:
            return os.readlink(os.path.join(self.path, DATA_LINK))
        except OSError:
            return None

    def matches(self, payload: Payload) -> bool:
        """Whether the current generation holds exactly payload (content, mode, owner)."""
        generation = self.current()
        if generation is None or "/" in generation:
            return False
        root = os.path.join(self.path, generation)
        found: set[str] = set()
        for dirpath, _dirs, files in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for name in files:
                found.add(name if rel == "." else f"{rel}/{name}")
        if found != payload.keys():
            return False
        for rel, spec in payload.items():
            file = os.path.join(root, rel)
            try:
                st = os.lstat(file)
                if (
                    not stat.S_ISREG(st.st_mode)
                    or stat.S_IMODE(st.st_mode) != spec.mode
                    or (st.st_uid, st.st_gid) != (self.uid, self.gid)
                    or st.st_size != len(spec.data)
                ):
                    return False
                with open(file, "rb") as f:
                    if f.read() != spec.data:
                        return False
            except OSError:
                return False
        return True

    def write(self, payload: Payload) -> bool:
        """Make the volume show payload; False (nothing touched) when it already did."""
        make_dir(self.path, self.dir_mode, -1, self.gid)
        if self.matches(payload):
            return False
        dfd = os.open(self.path, DIR_FLAGS)
        try:
            generation = self._generation_name()
            os.mkdir(generation, 0o700, dir_fd=dfd)
            gfd = os.open(generation, DIR_FLAGS, dir_fd=dfd)
            try:
                os.fchown(gfd, -1, self.gid)
                os.fchmod(gfd, self.dir_mode)
                for rel, spec in sorted(payload.items()):
                    self._write_file(gfd, rel, spec.data, spec.mode)
            finally:
                os.close(gfd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(TMP_LINK, dir_fd=dfd)
            os.symlink(generation, TMP_LINK, dir_fd=dfd)
            os.rename(TMP_LINK, DATA_LINK, src_dir_fd=dfd, dst_dir_fd=dfd)
            top = {rel.split("/")[0] for rel in payload}
            for name in sorted(top):
                link = f"{DATA_LINK}/{name}"
                try:
                    if os.readlink(name, dir_fd=dfd) == link:
                        continue
                    os.unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    pass
                os.symlink(link, name, dir_fd=dfd)
            for name in os.listdir(dfd):
                if name.startswith(".."):
                    # the old generation, and any a crash left behind
                    if name != generation and name[2:3].isdigit():
                        shutil.rmtree(name, dir_fd=dfd, ignore_errors=True)
                elif name not in top:
                    os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        return True

    def _write_file(self, gfd: int, rel: str, data: bytes, mode: int) -> None:
        *dirs, name = rel.split("/")
        fd = os.dup(gfd)
        try:
            for part in dirs:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                os.fchown(fd, -1, self.gid)
                os.fchmod(fd, self.dir_mode)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            ffd = os.open(name, flags, 0o600, dir_fd=fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(ffd, view) :]
                os.fchown(ffd, self.uid, self.gid)
                os.fchmod(ffd, mode)
            finally:
                os.close(ffd)
        finally:
            os.close(fd)
