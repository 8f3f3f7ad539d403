"""Objects API benchmark on a 3-node Mizzen store (loopback), for docs/BENCHMARKS.md.

(a) create --pods small valid pods through ObjectsClient (--concurrency
    writers) and, in the same run, the same number of raw etcd KV Puts of the
    same key and value size through the same number of writers to the leader;
    prints create/Put (issue target: >= 50%);
(b) list every pod: ObjectsClient.list, and end to end through
    ``python -m mizzen get pods -A -o json`` (subprocess wall time; target <= 1 s);
(c) watch fan-out: --informers Informers on one namespace of 200 pods (spread
    over three client connections, one per member order), 200 updates; latency
    from just before the Update call to the informer's update handler;
(d) a watch with field selector spec.nodeName=node-7 while the updated pods are
    spread over 20 node names, next to an unfiltered watch: events received by
    each (the server filters, so the selected watch sees ~1/20);
(e) `mizzen apply -f` of a file of --apply-pods pods (default 2,000) into the
    store of `mizzen up --no-agent` (one member, TLS with client certificates,
    the controllers running; no root needed), wall time of the CLI process
    (interpreter start included), --apply-rounds times, each in a new
    namespace: apply (all created), apply again (all unchanged), delete -f;
    and, for comparison, apply one object at a time (--max-in-flight 1, how
    apply worked before issue 15) unless --no-sequential.

Every loop is bounded in count and time, everything binds 127.0.0.1, and the
cluster is stopped and its directory removed on error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/objects_bench.py --quick
    .venv/bin/python bench/objects_bench.py --pods 10000
    .venv/bin/python bench/objects_bench.py --phases e     # apply only, no 3-node cluster

One file because it is one benchmark script: its three measurements share one
store and one report for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.client import ConflictError, Informer, ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.local_cluster import MizzenCluster, free_ports  # noqa: E402
from protos import objects_pb2 as pb  # noqa: E402
from protos import rpc_pb2, rpc_pb2_grpc  # noqa: E402

NS = "bench"
FAN_NS = "fanout"
NODES = 20
SELECTED_NODE = "node-7"
PHASE_TIMEOUT = 600.0
DELIVERY_TIMEOUT = 60.0
CLI_TIMEOUT = 120.0
STAMP = "bench-sent"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Options:
    pods: int
    concurrency: int
    informers: int
    fan_pods: int
    field_updates: int
    list_runs: int
    quick: bool
    phases: str = "abcde"
    apply_pods: int = 2000
    apply_rounds: int = 3
    sequential: bool = True


@dataclass
class Results:
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, metric: str, value: str, target: str = "") -> None:
        self.rows.append((metric, value, target))
        log(f"{metric}: {value}")


def make_pod(name: str, ns: str, node: str) -> pb.Pod:
    obj = pb.Pod(metadata=pb.ObjectMeta(name=name, namespace=ns, labels={"app": "bench"}))
    obj.spec.processes.add(name="main", command=["/bin/sleep", "3600"])
    obj.spec.node_name = node
    return obj


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def run_pool(n: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> float:
    """Run op(0..n-1) with concurrency workers; the elapsed seconds (bounded by PHASE_TIMEOUT)."""
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await op(i)

    started = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT), asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, n)):
            tg.create_task(worker())
    return time.perf_counter() - started


# ---------------------------------------------------------------- (a) create vs Put


async def bench_create(
    cluster: MizzenCluster, client: ObjectsClient, opts: Options, res: Results
) -> list[pb.Pod]:
    created: list[pb.Pod | None] = [None] * opts.pods

    async def create(i: int) -> None:
        created[i] = await client.create(make_pod(f"p-{i:05d}", NS, f"node-{i % NODES}"))

    log(f"(a) creating {opts.pods} pods, {opts.concurrency} writers")
    elapsed = await run_pool(opts.pods, opts.concurrency, create)
    pods = [p for p in created if p is not None]
    create_rate = len(pods) / elapsed
    stored = pb.Pod()
    stored.CopyFrom(pods[0])
    stored.metadata.ClearField("resource_version")  # as the store keeps it
    value_size = len(stored.SerializeToString(deterministic=True))
    res.add("(a) pod create throughput", f"{create_rate:,.0f}/s ({len(pods)} in {elapsed:.1f} s)")

    leader = cluster.endpoint(cluster.leader_index())
    value = b"x" * value_size
    async with grpc.aio.insecure_channel(leader) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)

        async def put(i: int) -> None:
            key = f"/rawbench/pods/{NS}/p-{i:05d}".encode()  # as long as /registry/...
            await kv.Put(rpc_pb2.PutRequest(key=key, value=value), timeout=30)

        log(f"(a) {opts.pods} raw KV Puts of {value_size} B to the leader")
        put_time = await run_pool(opts.pods, opts.concurrency, put)
    put_rate = opts.pods / put_time
    res.add(f"(a) raw KV Put throughput ({value_size} B values)", f"{put_rate:,.0f}/s")
    res.add("(a) create / raw Put", f"{create_rate / put_rate:.0%}", ">= 50%")
    return pods


# ---------------------------------------------------------------- (b) list


async def bench_list(
    cluster: MizzenCluster, client: ObjectsClient, opts: Options, expected: int, res: Results
) -> None:
    times = []
    for _ in range(opts.list_runs):
        started = time.perf_counter()
        result = await client.list("pods", NS)
        times.append(time.perf_counter() - started)
        if len(result.items) != expected:
            raise RuntimeError(f"list returned {len(result.items)} pods, expected {expected}")
    res.add(
        f"(b) list {expected} pods, ObjectsClient.list (median of {len(times)})",
        f"{ms(statistics.median(times))} (min {ms(min(times))})",
    )

    argv = [
        sys.executable, "-m", "mizzen", "get", "pods", "-A", "-o", "json",
        "--endpoints", ",".join(cluster.endpoints),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    times = []
    for _ in range(opts.list_runs):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                out, err = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        times.append(time.perf_counter() - started)
        if proc.returncode != 0:
            raise RuntimeError(f"mizzen get failed ({proc.returncode}): {err.decode()[-500:]}")
        items = json.loads(out).get("items", [])
        if len(items) < expected:
            raise RuntimeError(f"mizzen get printed {len(items)} pods, expected {expected}")
    res.add(
        f"(b) `mizzen get pods -A -o json`, wall (median of {len(times)})",
        f"{ms(statistics.median(times))} (min {ms(min(times))})",
        "<= 1 s",
    )
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import mizzen.cli.main", env=env
    )
    await asyncio.wait_for(proc.wait(), CLI_TIMEOUT)
    res.add("(b) of which: interpreter start + CLI import", ms(time.perf_counter() - started))


# ---------------------------------------------------------------- (c) fan-out


async def bench_fanout(
    cluster: MizzenCluster, client: ObjectsClient, opts: Options, res: Results
) -> None:
    fan: list[pb.Pod | None] = [None] * opts.fan_pods

    async def create(i: int) -> None:
        fan[i] = await client.create(make_pod(f"f-{i:03d}", FAN_NS, f"node-{i % NODES}"))

    await run_pool(opts.fan_pods, opts.concurrency, create)
    eps = cluster.endpoints
    rotations = [eps[i:] + eps[:i] for i in range(len(eps))]
    latencies: list[float] = []
    done = asyncio.Event()
    want = opts.informers * opts.fan_pods

    def on_update(old: Any, new: Any) -> None:
        sent = new.metadata.annotations.get(STAMP)
        if sent:
            latencies.append(time.time() - float(sent))
            if len(latencies) >= want:
                done.set()

    async with contextlib.AsyncExitStack() as stack:
        watch_clients = [
            await stack.enter_async_context(ObjectsClient(r, timeout=30)) for r in rotations
        ]
        informers = []
        for k in range(opts.informers):
            inf = Informer(watch_clients[k % len(watch_clients)], "pods", namespace=FAN_NS)
            inf.on_update(on_update)
            informers.append(inf)
        log(f"(c) {opts.informers} informers on {opts.fan_pods} pods")
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(inf.run()) for inf in informers]
            try:
                async with asyncio.timeout(DELIVERY_TIMEOUT):
                    for inf in informers:
                        await inf.has_synced.wait()
                await asyncio.sleep(0.5)  # let the watch streams open

                async def update(i: int) -> None:
                    obj = fan[i]
                    assert obj is not None
                    obj.metadata.annotations[STAMP] = repr(time.time())
                    fan[i] = await client.update(obj)

                elapsed = await run_pool(opts.fan_pods, 8, update)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DELIVERY_TIMEOUT):
                        await done.wait()
            finally:
                for t in tasks:
                    t.cancel()
    res.add(
        f"(c) fan-out: {opts.informers} informers x {opts.fan_pods} updates, delivered",
        f"{len(latencies):,} of {want:,} (updates sent in {elapsed:.1f} s, 8 writers)",
    )
    if latencies:
        res.add(
            "(c) update → informer handler latency p50 / p99",
            f"{ms(pct(latencies, 0.5))} / {ms(pct(latencies, 0.99))}",
        )


# ---------------------------------------------------------------- (d) field selector


async def bench_field_watch(
    client: ObjectsClient, pods: list[pb.Pod], opts: Options, res: Results
) -> None:
    n = min(opts.field_updates, len(pods))
    targets = pods[:n]
    expected_selected = sum(1 for p in targets if p.spec.node_name == SELECTED_NODE)
    start_rv = (await client.list("pods", NS, limit=1)).resource_version
    counts = {"selected": 0, "all": 0}
    finished = asyncio.Event()

    async def watch(name: str, selector: str) -> None:
        async for ev_type, _obj in client.watch(
            "pods", NS, field_selector=selector, resource_version=start_rv
        ):
            if ev_type != "BOOKMARK":
                counts[name] += 1
                if counts["all"] >= n and counts["selected"] >= expected_selected:
                    finished.set()

    async def update(i: int) -> None:
        obj = targets[i]
        obj.metadata.labels["round"] = "d"
        try:
            targets[i] = await client.update(obj)
        except ConflictError:
            fresh = await client.get("pods", obj.metadata.name, NS)
            fresh.metadata.labels["round"] = "d"
            targets[i] = await client.update(fresh)

    log(f"(d) {n} updates across {NODES} nodes; watch spec.nodeName={SELECTED_NODE} + unfiltered")
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(watch("selected", f"spec.nodeName={SELECTED_NODE}")),
            tg.create_task(watch("all", "")),
        ]
        try:
            await run_pool(n, opts.concurrency, update)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DELIVERY_TIMEOUT):
                    await finished.wait()
            await asyncio.sleep(1.0)  # anything extra would show up as an excess
        finally:
            for t in tasks:
                t.cancel()
    res.add(
        f"(d) watch spec.nodeName={SELECTED_NODE}: events received",
        f"{counts['selected']:,} (expected {expected_selected:,})",
    )
    res.add(
        "(d) unfiltered watch on the same pods: events received",
        f"{counts['all']:,} (of {n:,} updates; selected/all "
        f"{counts['selected'] / max(counts['all'], 1):.1%})",
    )


# ---------------------------------------------------------------- (e) apply -f


UP_READY_TIMEOUT = 60.0
APPLY_TIMEOUT = 600.0
POD_YAML = """\
apiVersion: mizzen/v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: bench}}
spec:
  processes:
    - name: main
      command: ["/bin/sleep", "3600"]
      resources:
        limits: {{cpu: 100m, memory: 32Mi}}
"""


class UpStore:
    """`mizzen up --no-agent` in a session of its own: the store (secure) and the controllers.

    alone() is the same store (same data, certificates and flags, from
    up_cmd.components) started without the controllers.
    """

    def __init__(self, data: Path) -> None:
        self.data = data
        client, raft = free_ports(2)
        self.up_args = [
            "up", "--no-agent",
            "--data-dir", str(data),
            "--listen-client", f"127.0.0.1:{client}",
            "--listen-raft", f"127.0.0.1:{raft}",
        ]  # fmt: skip
        self.endpoint = f"127.0.0.1:{client}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.proc: subprocess.Popen[bytes] | None = None

    def _start(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self) -> None:
        self._start([sys.executable, "-m", "mizzen", *self.up_args])

    def start_alone(self) -> None:
        """The store `up` runs, without the controllers (after start() made the PKI)."""
        from mizzen.cli.up_cmd import add_up_parser, components, prepare_security

        parser = argparse.ArgumentParser()
        add_up_parser(parser.add_subparsers())
        args = parser.parse_args(self.up_args)
        store = components(args, prepare_security(args))[0]
        assert store.name == "store", store.name
        self._start(store.argv)

    def cli_env(self) -> dict[str, str]:
        return dict(self.env, MIZZEN_CONFIG=str(self.data / "config"))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # `up` stops the store and the controllers
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


async def mizzen_cli(env: dict[str, str], *args: str) -> tuple[float, int, str, str]:
    """(wall seconds, exit code, stdout, stderr) of `python -m mizzen ARGS`."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mizzen", *args,
        cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(APPLY_TIMEOUT):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return time.perf_counter() - started, proc.returncode, out.decode(), err.decode()


async def wait_serving(env: dict[str, str]) -> None:
    deadline = time.monotonic() + UP_READY_TIMEOUT
    while True:
        _, code, _, err = await mizzen_cli(env, "get", "pods", "-A")
        if code == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"store not serving within {UP_READY_TIMEOUT}s: {err}")
        await asyncio.sleep(0.5)


async def apply_rounds(
    opts: Options, env: dict[str, str], manifest: Path, label: str
) -> dict[str, list[float]]:
    """opts.apply_rounds x (apply, apply again, delete -f [, apply one at a time, delete])."""
    n = opts.apply_pods

    async def timed(what: str, ns: str, *args: str, expect: str) -> float:
        wall, code, out, err = await mizzen_cli(env, *args, "-f", str(manifest), "-n", ns)
        lines = out.splitlines()
        if code != 0 or len(lines) != n or not all(x.endswith(expect) for x in lines):
            raise RuntimeError(f"{what}: exit {code}, {len(lines)} lines; {err[-500:]}")
        log(f"(e) {label}: {what} of {n} pods into {ns}: {wall:.2f} s")
        return wall

    walls: dict[str, list[float]] = {}
    for r in range(opts.apply_rounds):
        ns = f"{label}-{r}"
        created = await timed("apply", ns, "apply", expect="created")
        walls.setdefault("apply", []).append(created)
        _, code, out, _ = await mizzen_cli(env, "get", "pods", "-n", ns, "-o", "name")
        if code != 0 or len(out.splitlines()) != n:
            raise RuntimeError(f"get pods -n {ns} listed {len(out.splitlines())} of {n}")
        walls.setdefault("again", []).append(
            await timed("apply again", ns, "apply", expect="unchanged")
        )
        walls.setdefault("delete", []).append(
            await timed("delete -f", ns, "delete", expect="deleted")
        )
        if opts.sequential:
            seq = f"{label}-seq-{r}"
            one = await timed(
                "apply --max-in-flight 1", seq, "apply", "--max-in-flight", "1", expect="created"
            )
            walls.setdefault("sequential", []).append(one)
            await timed("delete -f", seq, "delete", expect="deleted")
    return walls


async def bench_apply(opts: Options, root: Path, res: Results) -> None:
    n = opts.apply_pods
    manifest = root / "pods.yaml"
    manifest.write_text("---\n".join(POD_YAML.format(name=f"p-{i:05d}") for i in range(n)))
    up = UpStore(root / "up")
    results: list[tuple[str, dict[str, list[float]]]] = []
    try:
        log(f"(e) mizzen up --no-agent at {up.endpoint}")
        up.start()
        await wait_serving(up.cli_env())
        results.append(
            ("`mizzen up --no-agent`", await apply_rounds(opts, up.cli_env(), manifest, "up"))
        )
        await asyncio.to_thread(up.stop)
        log("(e) the same store alone, without the controllers")
        up.start_alone()
        await wait_serving(up.cli_env())
        results.append(
            ("its store alone", await apply_rounds(opts, up.cli_env(), manifest, "alone"))
        )
    finally:
        await asyncio.to_thread(up.stop)

    def fmt(values: list[float]) -> str:
        shown = ", ".join(f"{v:.2f}" for v in values)
        return f"{statistics.median(values):.2f} s (runs: {shown})"

    rounds = f"median of {opts.apply_rounds}"
    for where, walls in results:
        res.add(f"(e) {where}: `mizzen apply -f` {n} pods, created ({rounds})",
                fmt(walls["apply"]), "<= 5 s")  # fmt: skip
        res.add(f"(e) {where}: the same file again, unchanged", fmt(walls["again"]))
        res.add(f"(e) {where}: `mizzen delete -f` of it", fmt(walls["delete"]))
        if opts.sequential:
            res.add(
                f"(e) {where}: apply one object at a time (--max-in-flight 1)",
                fmt(walls["sequential"]),
            )


# ---------------------------------------------------------------- driver


def machine_note() -> str:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"Machine: {len(os.sched_getaffinity(0))} CPUs ({cpu}), Linux {platform.release()}; "
        f"Python {platform.python_version()}, grpcio {grpc.__version__}. "
        f"{datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}."
    )


def render(opts: Options, res: Results) -> str:
    what = []
    if set(opts.phases) & set("abcd"):
        what.append(f"3-node Mizzen store on loopback ({opts.pods:,} pods)")
    if "e" in opts.phases:
        what.append(f"`mizzen up --no-agent` ({opts.apply_pods:,} pods applied)")
    lines = [
        f"### Objects API: {'; '.join(what)}{', --quick' if opts.quick else ''}",
        "",
        machine_note(),
        "",
        "| metric | value | issue target |",
        "|---|---|---|",
    ]
    lines += [f"| {m} | {v} | {t or '—'} |" for m, v, t in res.rows]
    return "\n".join(lines)


async def amain(opts: Options, root: Path) -> Results:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    res = Results()
    if set(opts.phases) & set("abcd"):
        cluster = MizzenCluster(3, root / "cluster", stop_grace=5.0)
        try:
            await asyncio.to_thread(cluster.start, 60.0)
            async with ObjectsClient(cluster.endpoints, timeout=30) as client:
                pods = await bench_create(cluster, client, opts, res)
                if "b" in opts.phases:
                    await bench_list(cluster, client, opts, len(pods), res)
                if "c" in opts.phases:
                    await bench_fanout(cluster, client, opts, res)
                if "d" in opts.phases:
                    await bench_field_watch(client, pods, opts, res)
        finally:
            await asyncio.to_thread(cluster.stop)
    if "e" in opts.phases:
        await bench_apply(opts, root, res)
    return res


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pods", type=int, default=None, help="pods to create (default 10000)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--informers", type=int, default=None, help="fan-out informers (default 100)")
    p.add_argument("--quick", action="store_true", help="1000 pods, 20 informers, 50 updates")
    p.add_argument(
        "--phases",
        default="abcde",
        help="which of (a)-(e) to run (b, c and d need a's pods, so a runs with them)",
    )
    p.add_argument("--list-runs", type=int, default=None, help="(b) runs (default 3)")
    p.add_argument("--apply-pods", type=int, default=2000, help="pods in (e)'s file")
    p.add_argument("--apply-rounds", type=int, default=None, help="(e) rounds (default 3)")
    p.add_argument("--no-sequential", action="store_true", help="(e): skip apply --max-in-flight 1")
    a = p.parse_args(argv)
    quick = bool(a.quick)
    pods = a.pods if a.pods is not None else (1000 if quick else 10_000)
    phases = "".join(sorted(set(a.phases)))
    if not phases or set(phases) - set("abcde"):
        p.error(f"--phases: letters a to e, not {a.phases!r}")
    return Options(
        pods=max(pods, NODES),
        concurrency=a.concurrency,
        informers=a.informers if a.informers is not None else (20 if quick else 100),
        fan_pods=50 if quick else 200,
        field_updates=min(pods, 200 if quick else 2000),
        list_runs=a.list_runs if a.list_runs is not None else (2 if quick else 3),
        quick=quick,
        phases=phases,
        apply_pods=a.apply_pods,
        apply_rounds=a.apply_rounds if a.apply_rounds is not None else (1 if quick else 3),
        sequential=not a.no_sequential,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    configure_logging("warning", "console")  # client logs to stderr; stdout is the table
    root = Path(tempfile.mkdtemp(prefix="mizzen-objects-bench-"))
    try:
        res = asyncio.run(amain(opts, root))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; cluster stopped")
        return 130
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(render(opts, res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
