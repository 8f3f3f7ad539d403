"""apply --wait benchmark (root): from the last pod Ready to `mizzen apply --wait` exiting.

A one-node store, a `mizzen controllers` process and a real `mizzen agent` (its
own cgroup parent) on this host. Each round runs the real command,
``python -m mizzen apply -f <file> --wait --output plain``, as a subprocess on
a Deployment ``aw-<i>`` of --replicas `sleep` processes whose readiness probe
(exec, every second) passes once a flag file exists:

* the bench creates the flag file once the command printed its first progress
  line (it is following the Deployment: its watches are open), so every pod
  turns Ready while the command watches;
* **overhead** = the moment the command exited (this host's wall clock, taken
  when ``wait()`` returns) - the latest transition time of the pods' Ready
  conditions (written by the agent, same host and clock). It spans the agent's
  status write, the ReplicaSet and Deployment controllers' status writes, the
  watch event to the command, its judgement, and the process's exit. The time
  its last line ("N object(s) converged") was read is reported too: the rest
  is the Python process ending (watches cancelled, channel closed, exit).

Pods with a readiness probe count as soon as they are ready; without one the
command waits --settle (1 s by default) more by design (docs/controllers.md),
which ``--no-probe`` shows (``--settle 0`` turns it off). The pods are Ready
at their start there, so the round starts them only after the command
follows: the Deployment is applied with 0 replicas first and the measured
apply scales it.

Everything binds 127.0.0.1; pods, agent, cgroups and store are removed on
exit, error or Ctrl-C.

    sudo .venv/bin/python bench/apply_wait_bench.py --rounds 20 --replicas 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mizzen.client import ObjectsClient  # noqa: E402
from mizzen.log_config import configure_logging  # noqa: E402
from mizzen.testing.bench_node import local_node, summary_ms, wait_node_ready  # noqa: E402

NODE = "bench-node"
NS = "apply-wait-bench"


def manifest(name: str, replicas: int, flag: Path | None) -> str:
    probe = ""
    if flag is not None:
        probe = (
            "          readinessProbe:\n"
            f"            exec: {{command: [test, -e, {flag}]}}\n"
            "            periodSeconds: 1\n"
        )
    return f"""\
apiVersion: mizzen/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 0
      processes:
        - name: main
          command: [/bin/sleep, "3600"]
{probe}"""


def _seconds(ts: Any) -> float:
    return float(ts.ToNanoseconds()) / 1e9


async def one_round(
    client: ObjectsClient,
    endpoints: list[str],
    base: Path,
    i: int,
    replicas: int,
    probe: bool,
    extra: list[str],
) -> tuple[float, float]:
    name = f"aw-{i}"
    flag = base / f"ready-{i}"
    path = base / f"{name}.yaml"
    if not probe:  # the pods start only once the command follows (see the module doc)
        path.write_text(manifest(name, 0, None))
        await _apply(endpoints, path)
    path.write_text(manifest(name, replicas, flag if probe else None))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mizzen", "apply", "-f", str(path), "--wait",
        "--output", "plain", "--timeout", "120s", "--endpoints", ",".join(endpoints), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    lines = []
    while True:
        line = (await proc.stdout.readline()).decode()
        if not line:
            break
        lines.append(line)
        if line.startswith(f"deployment/{name}: "):
            flag.touch()  # following: its watches are open
            break
    decided = 0.0
    rest = b""
    while True:
        chunk = await proc.stdout.readline()
        if not chunk:
            break
        rest += chunk
        if chunk.endswith(b"converged\n") and b": " not in chunk:
            decided = time.time()  # "N object(s) converged": the judgement is made
    code = await proc.wait()
    exited = time.time()
    err = (await proc.stderr.read()).decode()
    if code != 0:
        raise RuntimeError(f"apply --wait exited {code}: {err.strip()} {''.join(lines)}{rest!r}")
    pods = (await client.list("pods", NS, label_selector=f"app={name}")).items
    ready = [
        _seconds(c.last_transition_time)
        for p in pods
        for c in p.status.conditions
        if c.type == "Ready" and c.status == "True"
    ]
    if len(ready) < replicas:
        raise RuntimeError(f"{name}: {len(ready)} of {replicas} pods ready after the command")
    await client.delete("deployments", name, NS)
    return exited - max(ready), decided - max(ready)


async def measure(endpoints: list[str], base: Path, args: argparse.Namespace) -> dict[str, Any]:
    overheads: list[float] = []
    decisions: list[float] = []
    async with ObjectsClient(endpoints, timeout=30) as client:
        await wait_node_ready(client, NODE)
        for i in range(args.rounds):
            extra = [] if args.settle is None else ["--settle", args.settle]
            overhead, decided = await one_round(
                client, endpoints, base, i, args.replicas, probe=not args.no_probe, extra=extra
            )
            overheads.append(overhead)
            decisions.append(decided)
            print(
                f"round {i + 1}: overhead {overhead * 1000:.0f} ms "
                f"(last line read after {decided * 1000:.0f} ms)",
                flush=True,
            )
    return {
        "replicas": args.replicas,
        "rounds": args.rounds,
        "readiness_probe": not args.no_probe,
        "settle": args.settle or "default (1s)",
        "last_ready_to_exit": summary_ms(overheads),
        "last_ready_to_last_line": summary_ms(decisions),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--no-probe", action="store_true", help="pods without a readiness probe")
    ap.add_argument("--settle", default=None, help="the command's --settle (e.g. 0)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("apply_wait_bench: needs root (the agent creates cgroups)", file=sys.stderr)
        return 2
    configure_logging("warning", "console")
    base = Path(tempfile.mkdtemp(prefix="apply-wait-bench-"))
    report: dict[str, Any] = {}
    with local_node(base, NODE, controllers=True) as node:
        report.update(asyncio.run(measure(node.endpoints, base, args)))
    report["machine"] = f"{platform.node()} {os.cpu_count()} cpus, {platform.release()}"
    print(json.dumps(report, indent=2))
    return 0


async def _apply(endpoints: list[str], path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mizzen", "apply", "-f", str(path),
        "--endpoints", ",".join(endpoints), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await proc.wait() != 0:
        raise RuntimeError(f"apply {path} failed")


if __name__ == "__main__":
    sys.exit(main())
