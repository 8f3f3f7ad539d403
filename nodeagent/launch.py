"""Start a pod's process so that it is inside its cgroup before any user code runs.

No ``preexec_fn`` (unsafe in a process with gRPC threads): the child is
``/bin/sh`` running a tiny script that writes its own pid into every
``cgroup.procs`` file and then execs the command (through ``setpriv`` when the
process runs as another user). ``exec`` keeps the pid, so the pid we track is
the user's process, and it leads its own session and process group
(``start_new_session``) so a signal to the group reaches its children.

Everything that can be checked before spawning is checked here and raised as
``LaunchError`` with a message meant for the pod's status: executable not found
or not executable, unknown user, missing working directory. A wrapper exit of
126/127 (cgroup join or exec failed after the checks) is reported by the caller.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

JOIN_SCRIPT = (
    'for f do case $f in --) break;; esac; echo $$ > "$f" || exit 126; shift; done; '
    'shift; umask 022; exec "$@"'
)
"""Joins the cgroups, then execs the command with umask 022 (the agent itself runs
with 077, see mizzen/cli/main.py; a pod gets what a shell or container would)."""

WRAPPER_CANNOT_EXEC = (126, 127)
"""Exit codes of the wrapper when it could not join the cgroup or exec the command."""


class LaunchError(Exception):
    """The process cannot be started; the message says why, for the pod's status."""


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int
    # False for a numeric uid without a passwd entry: supplementary groups are cleared.
    known: bool


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one run of a process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str | None
    user: str
    procs_files: tuple[str, ...]


def resolve_user(user: str) -> RunAs | None:
    """The uid/gid to run as; None for "" (the agent's own user)."""
    if not user:
        return None
    if user.isdigit():
        uid = int(user)
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return RunAs(uid=uid, gid=uid, known=False)
        return RunAs(uid=uid, gid=entry.pw_gid, known=True)
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise LaunchError(f'user "{user}" does not exist on this node') from None
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid, known=True)


def resolve_command(command: str, env: Mapping[str, str], cwd: str | None) -> str:
    """The absolute path of command, looked up in the process's PATH like execvp would."""
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        if not os.path.exists(path):
            raise LaunchError(f'executable "{command}" not found')
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise LaunchError(f'"{command}" is not executable')
        return path
    found = shutil.which(command, path=env.get("PATH", DEFAULT_PATH))
    if found is None:
        raise LaunchError(f'executable "{command}" not found in PATH')
    return found


def process_env(
    env: Sequence[tuple[str, str]],
    *,
    namespace: str,
    pod: str,
    uid: str,
    pod_dir: str = "",
    ports: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The pod's variables, a default PATH, the pod's identity and its ports
    (``MIZZEN_PORT_<NAME>``, ``PORT``); user values win."""
    out = {
        "PATH": DEFAULT_PATH,
        "MIZZEN_POD_NAMESPACE": namespace,
        "MIZZEN_POD_NAME": pod,
        "MIZZEN_POD_UID": uid,
    }
    if pod_dir:
        out["MIZZEN_POD_DIR"] = pod_dir
    if ports:
        out.update(ports)
    out.update(env)
    return out


def _setpriv() -> str:
    found = shutil.which("setpriv", path=DEFAULT_PATH)
    if found is None:
        raise LaunchError("setpriv (util-linux) is needed to run a process as another user")
    return found


def wrap_argv(
    procs_files: Sequence[str], argv: Sequence[str], run_as: RunAs | None = None
) -> list[str]:
    """argv prefixed so that it first joins the cgroup(s), then drops to run_as."""
    out = ["/bin/sh", "-c", JOIN_SCRIPT, "sh", *procs_files, "--"]
    if run_as is not None:
        groups = "--init-groups" if run_as.known else "--clear-groups"
        out += [_setpriv(), f"--reuid={run_as.uid}", f"--regid={run_as.gid}", groups, "--"]
    out += argv
    return out


def checked_argv(spec: LaunchSpec, prefix: Sequence[str] = ()) -> list[str]:
    """The argv that runs spec (joins its cgroups, drops to its user), after every check
    that can be made before spawning (LaunchError). prefix runs between the user switch
    and the command (``setsid --ctty`` for ``mizzen exec -t``)."""
    if not spec.argv:
        raise LaunchError("the process has no command")
    if spec.cwd and not os.path.isdir(spec.cwd):
        raise LaunchError(f'working directory "{spec.cwd}" does not exist')
    run_as = resolve_user(spec.user)
    executable = resolve_command(spec.argv[0], spec.env, spec.cwd)
    return wrap_argv(spec.procs_files, [*prefix, executable, *spec.argv[1:]], run_as)


def launch(
    spec: LaunchSpec, log_fd: int, stdin_fd: int | None = None, tty_fd: int | None = None
) -> subprocess.Popen[bytes]:
    """Spawn the process (its stdin is stdin_fd, else /dev/null); LaunchError when it cannot
    run (checked before spawning).

    tty_fd (a pty's slave): the process's stdin, stdout, stderr and controlling terminal
    instead, in a new session made by ``setsid --ctty`` (no ``preexec_fn`` in a threaded
    process); the wrapper is not made a group leader here, or setsid would fork."""
    prefix: list[str] = []
    if tty_fd is not None:
        setsid = shutil.which("setsid", path=DEFAULT_PATH)
        if setsid is None:
            raise LaunchError("setsid (util-linux) is needed for a process with tty: true")
        prefix = [setsid, "--ctty"]
    argv = checked_argv(spec, prefix)
    try:
        if tty_fd is not None:
            return subprocess.Popen(
                argv,
                stdin=tty_fd,
                stdout=tty_fd,
                stderr=tty_fd,
                env=dict(spec.env),
                cwd=spec.cwd or "/",
                close_fds=True,
            )
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin_fd is None else stdin_fd,
            stdout=log_fd,
            stderr=log_fd,
            env=dict(spec.env),
            cwd=spec.cwd or "/",
            close_fds=True,
            start_new_session=True,
        )
    except OSError as err:
        raise LaunchError(f"cannot start the process: {err}") from None
