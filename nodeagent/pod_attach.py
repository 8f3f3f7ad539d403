"""Attach on this node: one client attached to a process's stdin and output.

A process whose spec says ``stdin: true`` gets a pipe as its stdin (else
/dev/null); the agent keeps the write end as the run's ``ProcessStdin``
(nodeagent.process_stdin) for as long as the run lives, so the process sees
end of file only when the agent closes it: with ``stdinOnce`` when the first
attach that sent stdin ends (the client's end of input, or the call ended),
else when the run exits. A new run (a restart) gets a new pipe, as a
restarted container does in Kubernetes; a run re-adopted after an agent
restart has none (the pipe died with the previous agent, and the process got
end of file then).

An attach (``AttachSession``) waits, bounded, for the process to run,
claims its stdin when the client wants to send some (one writer at a time;
refused once stdinOnce closed it), passes the client's bytes to the pipe
and streams the run's output from its log file (from now on, or from the
run's start) until the run exits, then its exit code. A process with
``tty: true`` has a pseudo-terminal instead of a pipe (nodeagent.process_tty):
the same claim, its client's resizes applied to it, its output copied by the
agent into the same log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING

import structlog

from nodeagent.logs import follow
from nodeagent.pod_ops import NotRunning, Target, TargetNotFound, find_target
from nodeagent.process_stdin import AttachRefused, ProcessStdin
from nodeagent.process_tty import ProcessTty
from protos import agent_pb2

if TYPE_CHECKING:
    from nodeagent.pod_worker import PodWorker
    from nodeagent.supervisor import ProcessSupervisor

log = structlog.get_logger(__name__)

DEFAULT_WAIT = 30.0
"""Seconds an attach waits for a process that is not running yet (AttachStart.wait_seconds 0)."""
MAX_WAIT = 300
OUTPUT_POLL = 0.05
"""How often an attach looks for new output in the process's log file (and for its exit)."""
_CHUNK = 64 * 1024
_LOOKUP_POLL = 0.1


# ------------------------------------------------------------------ finding the process


def _supervisor(
    workers: Iterable[PodWorker], namespace: str, pod: str, process: str
) -> tuple[PodWorker, ProcessSupervisor | None] | None:
    """The newest worker of namespace/pod and its named (or only) process; None: no worker."""
    candidates = [
        w for w in workers if w.ctx.namespace == namespace and w.ctx.pod == pod and not w.passive
    ]
    if not candidates:
        return None
    worker = candidates[-1]
    sups = list(worker.supervisors)
    if not process and len(sups) == 1:
        return worker, sups[0]
    return worker, next((s for s in sups if s.name == process), None)


async def wait_for_target(
    workers: Callable[[], Iterable[PodWorker]],
    namespace: str,
    pod: str,
    process: str,
    wait: float,
    *,
    poll: float = _LOOKUP_POLL,
) -> Target:
    """The process's live run, waiting up to wait seconds for it to start.

    Raised at once: a pod here without such a process (TargetNotFound), a
    process that has ended for good or a pod that is stopping (NotRunning);
    after wait: the reason it still does not run, with how long it waited.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return find_target(workers(), namespace, pod, process)
        except (TargetNotFound, NotRunning) as err:
            found = _supervisor(workers(), namespace, pod, process)
            if found is not None:
                worker, sup = found
                if sup is None:
                    raise
                if sup.final or worker.ctx.stopping.is_set():
                    raise NotRunning(
                        f'process "{sup.name}" of pod "{namespace}/{pod}" has ended'
                    ) from None
            if loop.time() >= deadline:
                raise type(err)(f"{err} (waited {wait:g}s for it to start)") from None
        await asyncio.sleep(poll)


# ------------------------------------------------------------------ one attach


def _copying(stdin: ProcessStdin | None) -> bool:
    """Whether stdin is a pty whose output the agent may still copy into the log file."""
    return isinstance(stdin, ProcessTty) and not stdin.closed


class AttachSession:
    """One client attached to a process's run: its stdin (claimed here) and its output."""

    def __init__(self, target: Target, start: agent_pb2.AttachStart, who: str) -> None:
        self.target = target
        self.run = target.run
        self.from_start = start.from_start
        self.stdin: ProcessStdin | None = None
        name = target.supervisor.name
        self.where = f'process "{name}" of pod "{target.pod}"'
        if start.stdin:
            stdin = self.run.stdin
            if stdin is None:
                if not target.supervisor.spec.stdin:
                    raise AttachRefused(
                        f"{self.where} does not take stdin (its spec has no stdin: true)"
                    )
                raise AttachRefused(
                    f"{self.where}: its stdin was closed when the node agent restarted"
                )
            stdin.claim(who, self.where)
            self.stdin = stdin
        ctx = target.worker.ctx
        sup = target.supervisor
        self.path = ctx.logs.instance_path(
            ctx.namespace, ctx.pod, ctx.uid, sup.name, sup.record.log_instance
        )

    async def _feed(self, requests: AsyncIterator[agent_pb2.AttachRequest]) -> None:
        """The client's stdin into the pipe; its end (or the call's) ends the input."""
        stdin = self.stdin
        async for request in requests:
            kind = request.WhichOneof("kind")
            if stdin is None or stdin.holder is None:
                continue
            if kind == "stdin":
                await stdin.write(request.stdin)
            elif kind == "stdin_close":
                stdin.end_input()
                return
            elif kind == "resize" and isinstance(stdin, ProcessTty):
                stdin.resize(request.resize)
        if stdin is not None:
            stdin.end_input()

    def _offset(self) -> int:
        if self.from_start:
            return 0
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    async def stream(
        self, requests: AsyncIterator[agent_pb2.AttachRequest], *, poll: float = OUTPUT_POLL
    ) -> AsyncGenerator[agent_pb2.ExecResponse, None]:
        """The run's output until it exits, then its exit code; the stdin claim ends with it
        (also when cancelled or closed early)."""
        feeding = asyncio.create_task(self._feed(requests))
        run = self.run
        try:
            output = follow(
                self.path,
                start_offset=self._offset(),
                poll=poll,
                # a tty's last output is in the log file once the agent closed its master
                stop_when=lambda: run.result is not None and not _copying(run.stdin),
            )
            async with contextlib.aclosing(output):
                async for data in output:
                    for i in range(0, len(data), _CHUNK):
                        yield agent_pb2.ExecResponse(stdout=data[i : i + _CHUNK])
            exited = await run.wait()
            yield agent_pb2.ExecResponse(
                exit=agent_pb2.ExecExit(code=exited.exit_code, signal=exited.signal)
            )
        finally:
            feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feeding
            if self.stdin is not None:
                self.stdin.release()
