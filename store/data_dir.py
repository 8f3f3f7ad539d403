"""The store's data directory on disk: private to the store's user.

It holds the Raft journal (every value ever written since the last
compaction), its ``.meta`` (term and vote) and ``raft.snapshot`` (the whole
state, and a pickle pysyncobj loads at start): other local users must neither
read nor write any of it. The daemons run with umask 077 (``mizzen.cli.main``),
so what they create is 0700/0600; ``prepare`` creates the directory 0700 and
warns, without failing, about anything already there that the group or others
can access (an old data dir, a copy made by hand).
"""

from __future__ import annotations

import os
import stat

import structlog

log = structlog.get_logger("store.data_dir")

DIR_MODE = 0o700


def loose_modes(path: str) -> list[tuple[str, int]]:
    """(path, mode) of the directory and everything under it that group or others can access.

    Symbolic links are reported by their own mode bits only (never followed).
    """
    out: list[tuple[str, int]] = []
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return out
    if mode & 0o077:
        out.append((path, mode))
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue  # removed meanwhile
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_IMODE(st.st_mode) & 0o077:
                out.append((full, stat.S_IMODE(st.st_mode)))
        dirs.sort()
    return out


def prepare(path: str) -> list[tuple[str, int]]:
    """Create the data directory 0700 if missing; log a warning per path others can access.

    Returns what it warned about.
    """
    if not os.path.isdir(path):
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        os.chmod(path, DIR_MODE)  # makedirs' mode is filtered by the umask
    loose = loose_modes(path)
    for where, mode in loose:
        log.warning(
            "data_dir_mode_loose",
            path=where,
            mode=f"{mode:04o}",
            message="other local users can access this store file or directory "
            "(keys, values, the Raft state); chmod 700 the data directory and 600 its files",
        )
    return loose
