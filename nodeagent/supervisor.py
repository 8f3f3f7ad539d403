"""One process of a pod through its runs: start, probe, wait, restart with back-off.

A ``ProcessSupervisor`` is driven by its pod worker: ``supervise()`` loops
until the restart policy says the process is finished or the worker is
stopping; every change of what it observes is written to the pod's local
record (``PodContext.save``) before the status is recomputed
(``PodContext.changed``), so a restarted agent re-adopts the current run.

The blocking part of a start (cgroup creation and limits, killing leftovers,
opening the log file, fork/exec of the wrapper that joins the cgroup) runs on
``PodContext.start_pool``, so a burst of pods starts concurrently instead of
one after another on the event loop; everything the loop owns (the record,
the state, the status) is updated back on the loop once the spawn returned.

One file because it is one process's lifecycle: starting, probing, waiting,
restarting and re-adopting one run share the run's state and the order in
which it is saved.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from nodeagent import runtime
from nodeagent.backoff import RestartBackoff
from nodeagent.cgroups.base import Cgroup, CgroupDriver, CgroupError, Limits
from nodeagent.config_inject import ConfigError
from nodeagent.dependencies import DependencyGate
from nodeagent.host_ports import named_ports, with_port_numbers
from nodeagent.launch import LaunchError, LaunchSpec, process_env, resolve_user, wrap_argv
from nodeagent.logs import PodLogs
from nodeagent.pod_config import PodConfig
from nodeagent.pod_status import ProcessView, Running, State, Waiting
from nodeagent.probes import ProbeTracker, run_probe
from nodeagent.process_stdin import ProcessStdin
from nodeagent.process_tty import ProcessTty
from nodeagent.runtime import ProcessRun
from nodeagent.services import PodServices
from nodeagent.state import ProcessRecord, Terminated
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)
T = TypeVar("T")

START_ERROR_EXIT_CODE = 128
REASON_DEPENDENCIES = "DependenciesNotReady"


@dataclass
class PodContext:
    """What a supervisor needs from its pod worker."""

    namespace: str
    pod: str
    uid: str
    restart_policy: str
    driver: CgroupDriver
    logs: PodLogs
    boot_id: str
    save: Callable[[], None]
    changed: Callable[[], None]
    grace: Callable[[], float]
    backoff_initial: float = 1.0
    backoff_cap: float = 60.0
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by the worker just before it kills the pod's cgroup (the end of the grace period).
    killing: bool = False
    # Where the blocking part of a start runs; None: the loop's default executor.
    start_pool: Executor | None = None
    # The pod's cgroup did not exist before this worker created it: the first start
    # of each process has no leftovers to kill and no OOM kills to count.
    new_cgroup: bool = False
    # Reports an Event about the pod: (type "Normal"|"Warning", reason, message).
    event: Callable[[str, str, str], None] = lambda _type, _reason, _message: None
    # The pod's ConfigMaps and Secrets (variables and volumes); None: literal env only.
    config: PodConfig | None = None
    # The Services of the pod's namespace (discovery variables); None: none.
    services: PodServices | None = None
    # Whether the pod's dependencies allow its processes to start; None: always.
    dependencies: DependencyGate | None = None
    # MIZZEN_PORT_<NAME> and PORT (nodeagent.host_ports.port_env), the same for every run.
    port_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def pod_cgroup_path(self) -> str:
        return f"pod-{self.uid}"


def limits_of(process: pb.Process) -> Limits:
    res = process.resources

    def opt(rl: pb.ResourceList, name: str) -> int | None:
        return getattr(rl, name) if rl.HasField(name) else None

    return Limits(
        cpu_limit_millis=opt(res.limits, "cpu_millis"),
        cpu_request_millis=opt(res.requests, "cpu_millis"),
        memory_limit_bytes=opt(res.limits, "memory_bytes"),
        pids_limit=opt(res.limits, "pids"),
    )


def should_restart(policy: str, exited: Terminated) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exited.exit_code != 0 and exited.reason != "StartError"
    return False


@dataclass(frozen=True)
class _Spawned:
    """What the blocking part of a start produced (in a pool thread)."""

    cgroup: Cgroup | None
    run: ProcessRun | None
    error: str = ""


class ProcessSupervisor:
    def __init__(self, ctx: PodContext, spec: pb.Process, record: ProcessRecord) -> None:
        self.ctx = ctx
        self.spec = spec
        self.record = record
        self.run: ProcessRun | None = None
        self.state: State = Waiting("ProcessCreating")
        self.ready = False
        self.final = False
        self.started_once = record.pid > 0 or record.last_terminated is not None
        self.start_error = ""
        self.cgroup: Cgroup | None = None
        self.backoff = RestartBackoff(ctx.backoff_initial, ctx.backoff_cap)
        self._ready_hint = False
        # Set once the first start attempt has an outcome the status can show
        # (running, failed, backing off, finished): the worker's first status
        # write waits for it, so a pod start costs one status write, not two.
        self.settled = asyncio.Event()
        self._spawned_before = False
        # The variables of the current run: literal ones until prepare() resolves the rest.
        self.env: list[tuple[str, str]] = [
            (e.name, e.value) for e in spec.env if not e.HasField("value_from")
        ]
        self.config_error = ""
        # Service discovery variables of the current run (before self.env: the pod's win).
        self.service_env: list[tuple[str, str]] = []
        self._log = log.bind(pod=f"{ctx.namespace}/{ctx.pod}", process=spec.name)
        if record.final is not None:
            self.state, self.final, self.started_once = record.final, True, True

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cgroup_path(self) -> str:
        return f"{self.ctx.pod_cgroup_path}/{self.spec.name}"

    def view(self) -> ProcessView:
        return ProcessView(
            name=self.name,
            state=self.state,
            last_terminated=self.record.last_terminated,
            ready=self.ready and isinstance(self.state, Running),
            restart_count=self.record.restart_count,
            pid=self.run.pid if self.run is not None else 0,
            started_once=self.started_once,
            final=self.final,
            start_error=self.start_error,
        )

    def recover(self, was_ready: bool = False) -> None:
        """Re-adopt the recorded run, or note that it ended while the agent was away.

        was_ready (from the pod's last status) keeps a re-adopted process ready
        until its readiness probe says otherwise, so an agent restart does not
        flip the pod's Ready condition.
        """
        if self.final or self.record.pid <= 0:
            return
        self._ready_hint = was_ready
        self.run = runtime.recover(self.record, self.ctx.driver, self.ctx.boot_id)
        self.cgroup = self.run.cgroup if self.run is not None else None
        if self.run is None:
            self._log.info("process_not_recovered", pid=self.record.pid)
        else:
            self._log.info("process_recovered", pid=self.run.pid)

    # -- the loop --------------------------------------------------------------------

    async def supervise(self) -> None:
        try:
            await self._supervise()
        finally:
            self.settled.set()

    async def _supervise(self) -> None:
        if self.final:
            return
        run = self.run
        while True:
            if run is None and self.ctx.stopping.is_set():
                return  # terminating: start nothing new
            if run is None and self.record.pid > 0:
                exited = self._lost()
            else:
                if run is None:
                    if not await self._wait_dependencies():
                        return  # terminating while waiting for its dependencies
                    if not await self._prepare():
                        return  # terminating while waiting for its configuration
                    run = await self._start()
                    if run is not None and self.ctx.stopping.is_set():
                        self._stop_late_start(run)
                exited = await self._watch(run) if run is not None else self._start_failed()
            self.run = run = None
            self.ready = False
            self.record.pid = 0
            if self.ctx.stopping.is_set() or not should_restart(self.ctx.restart_policy, exited):
                self._finish(exited)
                return
            delay = self.backoff.delay_after_exit(exited.started_at, exited.finished_at)
            self.record.last_terminated = exited
            self.state = Waiting(
                "CrashLoopBackOff", f"back-off {delay:g}s restarting failed process {self.name}"
            )
            self._commit()
            self.settled.set()
            self._log.info("process_backoff", delay=delay, exit_code=exited.exit_code)
            self.ctx.event(
                "Warning", "BackOff", f"Back-off {delay:g}s restarting failed process {self.name}"
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self.ctx.stopping.wait()
            if self.ctx.stopping.is_set():
                self._finish(exited)
                return
            self.record.restart_count += 1

    def _finish(self, exited: Terminated) -> None:
        self.state = exited
        self.final = True
        self.record.final = exited
        self._commit()

    def _commit(self) -> None:
        self.ctx.save()
        self.ctx.changed()

    def _lost(self) -> Terminated:
        now = self.ctx.wall()
        return Terminated(
            exit_code=-1,
            signal=0,
            reason="Unknown",
            message="the process was gone when the agent restarted",
            started_at=self.record.started_at,
            finished_at=now,
        )

    def _start_failed(self) -> Terminated:
        now = self.ctx.wall()
        self._log.warning("process_start_failed", error=self.start_error)
        self.ctx.event(
            "Warning", "Failed", f"Error starting process {self.name}: {self.start_error}"
        )
        return Terminated(
            exit_code=START_ERROR_EXIT_CODE,
            signal=0,
            reason="StartError",
            message=self.start_error,
            started_at=now,
            finished_at=now,
        )

    async def _wait_dependencies(self) -> bool:
        """Wait until the pod's dependencies are met; False when the pod is stopping.

        Meanwhile the process is Waiting with reason DependenciesNotReady and
        the pod condition's message (nodeagent.dependencies).
        """
        gate = self.ctx.dependencies
        while gate is not None and not gate.is_open:
            version = gate.version
            state = Waiting(REASON_DEPENDENCIES, gate.message)
            if state != self.state:
                self.state = state
                self._commit()
                self._log.info("process_waiting_for_dependencies", message=gate.message)
            self.settled.set()
            await self._unless_stopping(gate.wait_change(version))
            if self.ctx.stopping.is_set():
                return False
        return True

    async def _prepare(self) -> bool:
        """Resolve the run's variables (configuration, then Services) and write its volumes;
        False when the pod is stopping."""
        if not await self._prepare_config():
            return False
        services = self.ctx.services
        if services is not None:
            env = await self._unless_stopping(services.env())
            if env is None:
                return False
            self.service_env = env
        return True

    async def _prepare_config(self) -> bool:
        """Resolve the run's configuration variables and write its volumes; False when the
        pod is stopping.

        A reference that cannot be satisfied leaves the process Waiting with
        reason ConfigError (one Event per distinct message) until one of the
        pod's ConfigMaps or Secrets changes, then it tries again.
        """
        config = self.ctx.config
        if config is None:
            return True
        try:
            run_as = resolve_user(self.spec.user)
        except LaunchError:
            return True  # the start fails with the reason
        while True:
            version = config.version
            try:
                env = await self._unless_stopping(config.prepare(self.spec, run_as))
            except ConfigError as err:
                message = str(err)
            else:
                if env is None:
                    return False
                self.env = env
                self.config_error = ""
                return True
            if message != self.config_error:
                self.config_error = message
                self._log.warning("process_config_error", error=message)
                self.ctx.event(
                    "Warning", "ConfigError", f"Cannot start process {self.name}: {message}"
                )
            self.state = Waiting("ConfigError", message)
            self._commit()
            self.settled.set()
            await self._unless_stopping(config.wait_change(version))
            if self.ctx.stopping.is_set():
                return False

    async def _unless_stopping(self, aw: Awaitable[T]) -> T | None:
        """aw's result, or None (aw cancelled) once the pod starts stopping."""
        task = asyncio.ensure_future(aw)
        stopping = asyncio.ensure_future(self.ctx.stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
        if not task.done() or task.cancelled():
            return None
        return task.result()

    async def _start(self) -> ProcessRun | None:
        """A new run, or None with start_error set.

        The spawn runs on the start pool. When the task is cancelled meanwhile
        (the agent is stopping), the spawn is still awaited and its run recorded
        and saved, so the next agent re-adopts the process instead of losing it.
        """
        self.started_once = True
        count = self.record.restart_count
        new_cgroup = self.ctx.new_cgroup and not self._spawned_before
        self._spawned_before = True
        loop = asyncio.get_running_loop()
        spawning = loop.run_in_executor(self.ctx.start_pool, self._spawn, count, new_cgroup)
        try:
            spawned = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            spawned = await asyncio.shield(spawning)
            self._started(spawned, count)
            raise
        return self._started(spawned, count)

    def _spawn(self, count: int, new_cgroup: bool) -> _Spawned:
        """The blocking part of a start; runs in a pool thread and touches no loop state."""
        ctx = self.ctx
        try:
            cgroup = ctx.driver.create(self.cgroup_path, limits_of(self.spec))
            if not new_cgroup:
                cgroup.kill_all()  # leftovers of the previous run
        except CgroupError as err:
            return _Spawned(None, None, f"cgroup: {err}")
        spec = self.launch_spec(cgroup)
        read_end = write_end = -1
        tty = self.spec.tty and self.spec.stdin
        if tty:  # a pty: the agent keeps the master (process_tty), the slave is the process's
            try:
                write_end, read_end = os.openpty()
                os.set_inheritable(write_end, False)
            except OSError as err:
                return _Spawned(cgroup, None, f"pseudo-terminal: {err}")
        elif self.spec.stdin:  # a pipe held open by the agent (pod_attach), else /dev/null
            try:
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
            except OSError as err:
                return _Spawned(cgroup, None, f"stdin pipe: {err}")
        fd = ctx.logs.open_instance(ctx.namespace, ctx.pod, ctx.uid, self.name, count)
        try:
            run = runtime.start(
                spec,
                cgroup,
                fd,
                clock=ctx.wall,
                new_cgroup=new_cgroup,
                stdin_fd=read_end if read_end >= 0 and not tty else None,
                tty_fd=read_end if tty else None,
            )
        except LaunchError as err:
            if write_end >= 0:
                os.close(write_end)
            os.close(fd)
            return _Spawned(cgroup, None, str(err))
        finally:
            if read_end >= 0:
                os.close(read_end)
        if tty:  # the master's output goes to the log file: the tty keeps fd
            run.stdin = ProcessTty(write_end, fd, once=self.spec.stdin_once)
        else:
            os.close(fd)
            if write_end >= 0:
                run.stdin = ProcessStdin(write_end, once=self.spec.stdin_once)
        ctx.logs.prune(ctx.namespace, ctx.pod, ctx.uid, self.name, keep_instances=2)
        return _Spawned(cgroup, run)

    def _started(self, spawned: _Spawned, count: int) -> ProcessRun | None:
        """Back on the loop: record the run (saved before the status says Running)."""
        if spawned.cgroup is not None:
            self.cgroup = spawned.cgroup
        run = spawned.run
        if run is None:
            self.start_error = spawned.error
            return None
        self.start_error = ""
        run.record_into(self.record, self.ctx.boot_id)
        self.record.log_instance = count
        self.state = Running(run.started_at)
        self._commit()
        self._log.info("process_started", pid=run.pid, restart_count=count)
        self.ctx.event("Normal", "Started", f"Started process {self.name}")
        return run

    def _stop_late_start(self, run: ProcessRun) -> None:
        """The pod began stopping while this run was being spawned.

        The worker's SIGTERM missed it: send it now, and let the grace period
        run its course — unless the worker has already killed the pod's
        cgroup, possibly before this run joined it: then kill it at once (its
        process group too: the wrapper may not have joined the cgroup yet, and
        it forks nothing before it has).
        """
        self._log.info("process_started_while_stopping", pid=run.pid)
        if self.ctx.killing or self.ctx.grace() <= 0:
            run.signal_group(signal.SIGKILL)
            run.kill_cgroup()
        else:
            run.signal_group(signal.SIGTERM)

    def launch_spec(self, cgroup: Cgroup) -> LaunchSpec:
        config = self.ctx.config
        env = process_env(
            [*self.service_env, *self.env],
            namespace=self.ctx.namespace,
            pod=self.ctx.pod,
            uid=self.ctx.uid,
            pod_dir=config.pod_dir if config is not None else "",
            ports=self.ctx.port_env,
        )
        return LaunchSpec(
            argv=(*self.spec.command, *self.spec.args),
            env=env,
            cwd=self.spec.working_dir or None,
            user=self.spec.user,
            procs_files=tuple(cgroup.procs_files()),
        )

    async def _watch(self, run: ProcessRun) -> Terminated:
        """Probe the run until it exits; its exit (and leftovers killed)."""
        self.run = run
        self.state = Running(run.started_at)
        if run.adopted and self.ctx.config is not None:
            # for probes: a re-adopted run's variables, as far as they are known now
            self.env = self.ctx.config.env_now(self.spec) or self.env
        initially_ready = self._ready_hint
        self._ready_hint = False
        self.ready = initially_ready or not self.spec.HasField("readiness_probe")
        self.ctx.changed()
        self.settled.set()
        probes = asyncio.create_task(self._probe_loop(run, initially_ready))
        if isinstance(run.stdin, ProcessTty):
            run.stdin.start_copy()
        try:
            exited = await run.wait()
        except BaseException:
            if run.stdin is not None:
                run.stdin.close()
            raise
        finally:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
            if run.stdin is not None and not isinstance(run.stdin, ProcessTty):
                run.stdin.close()
        run.kill_cgroup()
        if isinstance(run.stdin, ProcessTty):  # its last output into the log, then closed
            await run.stdin.drain_and_close()
        self._log.info(
            "process_exited", pid=run.pid, exit_code=exited.exit_code, reason=exited.reason
        )
        if exited.reason == "OOMKilled":
            self.ctx.event("Warning", "OOMKilled", f"Process {self.name} was killed: out of memory")
        return exited

    async def _probe_loop(self, run: ProcessRun, initially_ready: bool) -> None:
        ctx = self.ctx
        now = ctx.monotonic()
        trackers: dict[str, tuple[pb.Probe, ProbeTracker]] = {}
        ports = named_ports(self.spec)
        if self.spec.HasField("liveness_probe"):
            spec = with_port_numbers(self.spec.liveness_probe, ports)
            trackers["liveness"] = (spec, ProbeTracker(spec, started_at=now, initial_state=True))
        if self.spec.HasField("readiness_probe"):
            spec = with_port_numbers(self.spec.readiness_probe, ports)
            trackers["readiness"] = (
                spec,
                ProbeTracker(spec, started_at=now, initial_state=initially_ready),
            )
        if not trackers:
            return
        launch = self.launch_spec(run.cgroup)
        try:
            run_as = resolve_user(self.spec.user)
        except LaunchError:
            run_as = None

        def wrap(argv: list[str]) -> list[str]:
            return wrap_argv(launch.procs_files, argv, run_as)

        while True:
            due = min(t.next_due() for _, t in trackers.values())
            await asyncio.sleep(max(0.0, due - ctx.monotonic()))
            for kind, (spec, tracker) in trackers.items():
                started = ctx.monotonic()
                if tracker.next_due() > started:
                    continue
                result = await run_probe(spec, env=launch.env, cwd=launch.cwd, wrap_argv=wrap)
                tracker.record(started, result.ok)
                if kind == "readiness" and tracker.healthy != self.ready:
                    self.ready = tracker.healthy
                    self._log.info("readiness_changed", ready=self.ready, message=result.message)
                    if not self.ready:
                        ctx.event(
                            "Warning", "Unhealthy", f"Readiness probe failed: {result.message}"
                        )
                    ctx.changed()
                if kind == "liveness" and not tracker.healthy:
                    self._log.info("liveness_failed", message=result.message)
                    ctx.event("Warning", "Unhealthy", f"Liveness probe failed: {result.message}")
                    ctx.event(
                        "Normal",
                        "Killing",
                        f"Process {self.name} failed liveness probe, will be restarted",
                    )
                    await runtime.stop(run, ctx.grace())
                    return
