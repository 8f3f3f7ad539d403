"""What the agent's non-state operations (Signal, Exec, Attach) act on, and who may ask.

* ``find_target`` picks the pod's process a request names (its only one when
  the request names none) among this node's pod workers, and its current run;
* ``parse_signal`` / ``check_signal``: signal names and numbers, and the
  refusal of signals that would only bypass graceful deletion (KILL, STOP:
  ``mizzen delete pod`` stops a pod; an untrappable signal skips its grace);
* ``AgentPolicy``: the roles allowed per method of the agent's gRPC service —
  logs and stats for viewers, Signal and Exec (and Attach, which is Exec's
  permission) for admins unless the agent is started with ``--signal-roles`` /
  ``--exec-roles`` (docs/security.md).

Pure apart from reading the workers' current state; the errors name the
request field they are about.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mizzen.security.server_auth import Denied, Identity, current_caller

if TYPE_CHECKING:
    from nodeagent.pod_worker import PodWorker
    from nodeagent.runtime import ProcessRun
    from nodeagent.supervisor import ProcessSupervisor

BYPASS_GRACE = frozenset({signal.SIGKILL, signal.SIGSTOP})
"""Signals a process cannot handle: they would only bypass graceful deletion."""

READ_ROLES = frozenset({"viewer"})
GRANTABLE_ROLES = ("admin", "viewer", "controller")
"""Roles ``--exec-roles`` / ``--signal-roles`` may name (admin is always allowed)."""


class InvalidRequest(Exception):
    """The request itself is malformed; the message names the field."""


class TargetNotFound(Exception):
    """This node runs no such pod (or the pod has no such process)."""


class NotRunning(Exception):
    """The process exists but has no live run to act on."""


@dataclass(frozen=True)
class Target:
    worker: PodWorker
    supervisor: ProcessSupervisor
    run: ProcessRun

    @property
    def pod(self) -> str:
        return f"{self.worker.ctx.namespace}/{self.worker.ctx.pod}"


def find_target(workers: Iterable[PodWorker], namespace: str, pod: str, process: str) -> Target:
    """The live run of the named process of namespace/pod on this node."""
    if not pod:
        raise InvalidRequest("pod: required")
    candidates = [
        w for w in workers if w.ctx.namespace == namespace and w.ctx.pod == pod and not w.passive
    ]
    if not candidates:
        raise TargetNotFound(f'pod "{namespace}/{pod}" is not running on this node')
    # A pod recreated under the same name: the newest worker (the old one is stopping).
    worker = candidates[-1]
    names = [s.name for s in worker.supervisors]
    if not process:
        if len(names) != 1:
            raise InvalidRequest(
                f'process: required: pod "{namespace}/{pod}" has processes {", ".join(names)}'
            )
        process = names[0]
    sup = next((s for s in worker.supervisors if s.name == process), None)
    if sup is None:
        raise TargetNotFound(
            f'pod "{namespace}/{pod}" has no process "{process}" (it has {", ".join(names)})'
        )
    run = sup.run
    if worker.ctx.stopping.is_set() or run is None or run.result is not None:
        raise NotRunning(f'process "{process}" of pod "{namespace}/{pod}" is not running')
    return Target(worker, sup, run)


def parse_signal(text: str) -> signal.Signals:
    """``HUP``, ``SIGHUP``, ``hup`` or ``1`` → SIGHUP; InvalidRequest naming the field."""
    name = text.strip()
    if not name:
        raise InvalidRequest("signal: required")
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            raise InvalidRequest(f"signal: unknown signal number {name}") from None
    upper = name.upper()
    if not upper.startswith("SIG"):
        upper = "SIG" + upper
    try:
        sig = signal.Signals[upper]
    except KeyError:
        raise InvalidRequest(f'signal: unknown signal "{text}"') from None
    if upper.startswith("SIG_"):  # SIG_BLOCK and friends are not signals
        raise InvalidRequest(f'signal: unknown signal "{text}"')
    return sig


def check_signal(sig: signal.Signals, force: bool) -> None:
    """Refuse KILL and STOP unless forced: they only bypass graceful deletion."""
    if sig in BYPASS_GRACE and not force:
        raise InvalidRequest(
            f"signal: {sig.name} cannot be handled by the process and would only bypass "
            "graceful deletion (delete the pod instead); force sends it anyway"
        )


def caller() -> str:
    """Who is calling, for Events and logs."""
    identity = current_caller()
    return str(identity) if identity is not None else "anonymous (insecure agent)"


def parse_roles(flag: str, value: str) -> frozenset[str]:
    """A comma-separated role list of ``--exec-roles`` / ``--signal-roles``; ValueError."""
    roles = frozenset(r.strip() for r in value.split(",") if r.strip())
    bad = sorted(roles - set(GRANTABLE_ROLES))
    if bad:
        raise ValueError(
            f"{flag}: unknown or ungrantable role {', '.join(bad)} "
            f"(expected some of {', '.join(GRANTABLE_ROLES)})"
        )
    return roles | {"admin"}


class AgentPolicy:
    """Roles per method of mizzen.v1.NodeAgent (admin always)."""

    def __init__(
        self,
        *,
        exec_roles: frozenset[str] = frozenset({"admin"}),
        signal_roles: frozenset[str] = frozenset({"admin"}),
    ) -> None:
        self.exec_roles = exec_roles | {"admin"}
        self.signal_roles = signal_roles | {"admin"}
        self.read_roles = READ_ROLES | {"admin"}

    def _rule(self, method: str) -> tuple[frozenset[str], str]:
        name = method.rpartition("/")[2]
        if name == "Exec":
            return self.exec_roles, "run commands in pods (exec)"
        if name == "Attach":  # a process's stdin is as powerful as a command
            return self.exec_roles, "attach to pod processes (attach)"
        if name == "Signal":
            return self.signal_roles, "signal pod processes"
        return self.read_roles, "read pod logs and stats"

    async def authorize(self, identity: Identity, method: str, request: Any) -> None:
        roles, what = self._rule(method)
        if identity.role not in roles:
            raise Denied(what, f"only roles {', '.join(sorted(roles))} may")

    def watch_delta(self, method: str, request: Any) -> int:
        return 0

    def watch_answer(self, method: str, response: Any) -> tuple[str, int] | None:
        return None
