"""Whether a pod's processes may start: its dependencies (``spec.dependsOn``).

The dependencies controller writes the pod condition ``DependenciesReady``;
the agent only reads it. A ``DependencyGate`` per pod is open when the pod
has no dependencies, or once that condition has been True — and then stays
open for good: dependencies order the *start* of a pod, they never stop one.
A process that exits later restarts under its restart policy without waiting
again, and a pod whose processes had started before the agent restarted
(its local record says so) is not held back either.

While the gate is closed each process is Waiting with reason
``DependenciesNotReady`` and the condition's message (what is missing), so
``get pods`` and ``describe pod`` say what the pod waits for. Nothing polls:
``update`` is called with every version of the pod the agent's watch
delivers, and waiters wake on a change (``version`` / ``wait_change``, as
``PodConfig`` does for ConfigMaps).
"""

from __future__ import annotations

import asyncio

from mizzen.api.dependencies import CONDITION, target_of
from protos import objects_pb2 as pb


def _message(pod: pb.Pod) -> str:
    for cond in pod.status.conditions:
        if cond.type == CONDITION:
            return cond.message or f"condition {CONDITION} is {cond.status}"
    targets = ", ".join(str(target_of(d)) for d in pod.spec.depends_on)
    return f"waiting for the dependencies controller to evaluate: {targets}"


def _met(pod: pb.Pod) -> bool:
    return any(c.type == CONDITION and c.status == "True" for c in pod.status.conditions)


class DependencyGate:
    """Opens once the pod's dependencies are met (or when it has none); see the module doc."""

    def __init__(self, pod: pb.Pod, *, started: bool = False) -> None:
        """started: a process of the pod has run before (re-adopted pod): open at once."""
        self.is_open = started or not pod.spec.depends_on or _met(pod)
        self.message = "" if self.is_open else _message(pod)
        self.version = 0
        self._change = asyncio.Event()

    def update(self, pod: pb.Pod) -> None:
        """A newer version of the pod (from the watch, or a status write's answer)."""
        if self.is_open:
            return
        if _met(pod):
            self.is_open = True
            self.message = ""
        else:
            message = _message(pod)
            if message == self.message:
                return
            self.message = message
        self.version += 1
        change, self._change = self._change, asyncio.Event()
        change.set()

    async def wait_change(self, version: int) -> None:
        """Return once the gate opened or its message changed after version was read."""
        while self.version == version:
            await self._change.wait()
