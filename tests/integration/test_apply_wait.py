"""`apply --wait` and `wait` end to end (root): a real store, `mizzen controllers` and agent.

* apply --wait of a Deployment returns 0 once it is available, with a progress
  line per change (plain: stdout is a pipe, no terminal sequences);
* a Deployment whose process exits 1: apply --wait fails within the grace
  with "CrashLoopBackOff: exit code 1" (not at its timeout);
* a Deployment no node can take (nodeSelector): the same, with the
  scheduler's words;
* under a pty the display redraws its lines in place (cursor movement) and
  ends with the converged line;
* `wait --for=condition=Complete job/x` returns once the Job completed,
  `--for=jsonpath` reads a pod's phase, `--for=delete` returns once it is
  gone, and a condition that never comes is a timeout naming the object.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_fixtures import AgentProcess, agent_and_controllers, cgroups_unavailable

from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "applywait"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("applywait-store")) as c:
        yield c


@pytest.fixture(scope="module")
def daemons(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("applywait")
    with agent_and_controllers(base, cluster.endpoints, "applywait") as agent:
        # no pod is unschedulable for want of a node (wait: a cluster-scoped kind;
        # an object that does not exist yet is an error, as in kubectl)
        deadline = time.monotonic() + 30
        while True:
            ready = mizzen(cluster, "wait", "--for=condition=Ready", f"node/{agent.name}")
            if "not found" not in ready.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout == f"node/{agent.name} condition met\n"
        yield agent


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}


def mizzen(
    cluster: MizzenCluster, *args: str, stdin: str | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=_env(),
    )


def deployment(name: str, command: str, replicas: int = 2, extra: str = "") -> str:
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
      terminationGracePeriodSeconds: 1
{extra}      processes:
        - name: main
          command: [sh, -c, {command!r}]
"""


@pytest.mark.timeout(120)
def test_apply_wait_returns_once_available_with_progress_lines(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    out = mizzen(
        cluster, "apply", "-f", "-", "--wait", "--timeout", "60s",
        stdin=deployment("web", "exec sleep 3600"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "deployment/web created"
    progress = [line for line in lines if line.startswith("deployment/web: ")]
    assert len(progress) >= 2, out.stdout  # at least one waiting line, then converged
    assert "updated" in progress[0] and "converged" not in progress[0]
    assert progress[-1] == ("deployment/web: converged (2/2 updated, 2/2 ready, 2/2 available)")
    assert lines[-1] == "1 object(s) converged"
    assert "\x1b[" not in out.stdout  # not a terminal: plain lines


@pytest.mark.timeout(120)
def test_apply_wait_fails_on_a_crash_loop_within_the_grace(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    out = mizzen(
        cluster, "apply", "-f", "-", "--wait", "--timeout", "80s", "--fail-grace", "2s",
        "--output", "plain", stdin=deployment("crash", "exit 1", replicas=1),
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    [error] = out.stderr.strip().splitlines()
    assert error.startswith("mizzen: deployment/crash: crash-"), error
    assert "CrashLoopBackOff: exit code 1 (for more than 2s)" in error
    assert "timed out" not in error


@pytest.mark.timeout(120)
def test_apply_wait_fails_on_an_unschedulable_pod_with_the_schedulers_reason(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    manifest = deployment(
        "nowhere", "exec sleep 3600", replicas=1, extra="      nodeSelector: {disk: none-such}\n"
    )
    out = mizzen(
        cluster, "apply", "-f", "-", "--wait", "--timeout", "80s", "--fail-grace", "2s",
        stdin=manifest,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    [error] = out.stderr.strip().splitlines()
    assert "0/1 nodes are available: 1 node(s) didn't match node selector." in error, error
    assert error.startswith("mizzen: deployment/nowhere: nowhere-")
    assert "timed out" not in error


def _read_pty(argv: list[str], stdin: str, timeout: float) -> tuple[int, str]:
    """Run argv with stdout and stderr on a pty (stdin a pipe); (exit code, what it wrote)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=terminal,
        stderr=terminal,
        cwd=REPO_ROOT,
        env={**_env(), "TERM": "xterm-256color", "COLUMNS": "160"},
    )
    os.close(terminal)
    assert proc.stdin is not None
    proc.stdin.write(stdin.encode())
    proc.stdin.close()
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.timeout(120)
def test_live_display_redraws_in_place_under_a_terminal(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    argv = [
        sys.executable, "-m", "mizzen", "apply", "-f", "-", "--wait", "--timeout", "60s",
        "--endpoints", ",".join(cluster.endpoints),
    ]  # fmt: skip
    config = f"apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {{name: live, namespace: {NS}}}\n"
    manifests = config + "---\n" + deployment("live", "exec sleep 3600", replicas=2)
    code, text = _read_pty(argv, manifests, 90)
    assert code == 0, text
    assert "configmap/live created" in text and "deployment/live created" in text
    # two lines redrawn in place: back to the line start, erase it, up one line, erase it
    assert "\r\x1b[2K\x1b[1A\x1b[2K" in text, repr(text)
    assert "2/2 updated, 2/2 ready, 2/2 available" in text
    assert text.count("✓") >= 2  # both objects' lines end marked done
    assert text.rstrip().endswith("2 object(s) converged")


JOB = f"""\
apiVersion: mizzen/v1
kind: Job
metadata: {{name: once, namespace: {NS}}}
spec:
  template:
    metadata: {{labels: {{app: once}}}}
    spec:
      restartPolicy: Never
      processes:
        - {{name: main, command: [sh, -c, "sleep 1; exit 0"]}}
"""


@pytest.mark.timeout(120)
def test_wait_for_job_complete_jsonpath_and_delete(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    applied = mizzen(cluster, "apply", "-f", "-", stdin=JOB)
    assert applied.returncode == 0, applied.stderr
    out = mizzen(
        cluster, "wait", "--for=condition=Complete", "job/once", "-n", NS, "--timeout", "60s"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["job/once condition met"]

    out = mizzen(
        cluster, "wait", "--for=jsonpath={.status.phase}=Succeeded", "pod",
        "-l", "job-name=once", "-n", NS, "--timeout", "30s",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("pod/once-") and "condition met" in out.stdout

    out = mizzen(cluster, "wait", "--for=condition=Failed", "job/once", "-n", NS, "--timeout", "1s")
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "mizzen: timed out after 1s waiting for condition=Failed on job/once"
    )

    deleted = mizzen(cluster, "delete", "job", "once", "-n", NS)
    assert deleted.returncode == 0, deleted.stderr
    out = mizzen(cluster, "wait", "--for=delete", "job/once", "-n", NS, "--timeout", "30s")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["job/once condition met"]

    out = mizzen(cluster, "wait", "--for=condition=Complete", "job/nope", "-n", NS)
    assert out.returncode == 1
    assert out.stderr.strip() == 'mizzen: jobs "nope" not found'


@pytest.mark.timeout(120)
def test_apply_wait_fails_at_the_progress_deadline_and_on_a_failed_job(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    never_ready = deployment("stuck", "exec sleep 3600", replicas=1).replace(
        "          command: [sh, -c, 'exec sleep 3600']\n",
        "          command: [sh, -c, 'exec sleep 3600']\n"
        "          readinessProbe: {exec: {command: ['false']}, periodSeconds: 1}\n",
    )
    never_ready = never_ready.replace(
        "  replicas: 1\n", "  replicas: 1\n  progressDeadlineSeconds: 2\n"
    )
    out = mizzen(
        cluster, "apply", "-f", "-", "--wait", "--timeout", "80s", "--fail-grace", "60s",
        stdin=never_ready,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout
    [error] = out.stderr.strip().splitlines()
    assert error.startswith(
        'mizzen: deployment/stuck: ProgressDeadlineExceeded: ReplicaSet "stuck-'
    ), error
    assert "has timed out progressing. (stuck-" in error and "not ready)" in error

    failing = JOB.replace("name: once", "name: fails").replace("sleep 1; exit 0", "exit 3")
    failing = failing.replace("spec:\n  template:", "spec:\n  backoffLimit: 0\n  template:", 1)
    out = mizzen(cluster, "apply", "-f", "-", "--wait", "--timeout", "80s", stdin=failing)
    assert out.returncode == 1, out.stdout
    assert out.stderr.strip() == (
        "mizzen: job/fails: Failed: BackoffLimitExceeded: "
        "Job has reached the specified backoff limit"
    )


def _config(name: str, value: str) -> str:
    return (
        f"apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {NS}}}\n"
        f"data: {{greeting: {value}, unused: x}}\n"
    )


def _consumer(name: str, config: str) -> str:
    env = (
        "      env:\n"
        "        - name: GREETING\n"
        f"          valueFrom: {{configMapKeyRef: {{name: {config}, key: greeting}}}}\n"
    )
    text = deployment(name, "exec sleep 3600", replicas=2)
    return text + env.replace("      env:", "          env:").replace(
        "        - name: GREETING", "            - name: GREETING"
    ).replace("          valueFrom", "              valueFrom")


def _replicasets(cluster: MizzenCluster, app: str) -> dict[str, str]:
    """ReplicaSet name -> its mizzen.io/config-sources annotation."""
    out = mizzen(cluster, "get", "replicasets", "-n", NS, "-l", f"app={app}", "-o", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    items = doc.get("items", [doc])  # one object is printed as itself
    return {
        rs["metadata"]["name"]: rs["metadata"]
        .get("annotations", {})
        .get("mizzen.io/config-sources", "")
        for rs in items
        if int(rs.get("spec", {}).get("replicas", 0)) > 0
    }


@pytest.mark.timeout(180)
def test_apply_wait_of_a_config_map_follows_its_consumers_rollout(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    first = mizzen(
        cluster, "apply", "-f", "-", "--wait", "--timeout", "60s",
        stdin=_config("settings", "hello") + "---\n" + _consumer("reader", "settings"),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    (before,) = _replicasets(cluster, "reader").items()

    # a key the consumer does not count: applied, nothing to roll out
    unused = _config("settings", "hello").replace("unused: x", "unused: y")
    quiet = mizzen(cluster, "apply", "-f", "-", "--wait", "--timeout", "60s", stdin=unused)
    assert quiet.returncode == 0, quiet.stderr
    assert "deployment/reader" not in quiet.stdout, quiet.stdout
    assert quiet.stdout.splitlines()[-1] == "1 object(s) converged"

    # the counted key: the ConfigMap alone is applied, the Deployment is followed
    # until its new ReplicaSet runs on every replica
    changed = _config("settings", "bonjour").replace("unused: x", "unused: y")
    rolled = mizzen(cluster, "apply", "-f", "-", "--wait", "--timeout", "90s", stdin=changed)
    assert rolled.returncode == 0, rolled.stderr
    lines = rolled.stdout.splitlines()
    assert lines[0] == "configmap/settings configured"
    assert any(
        line.startswith("deployment/reader: ") and "rollout of the ConfigMap/settings" in line
        for line in lines
    ), rolled.stdout
    assert lines[-1] == "2 object(s) converged"
    # when apply --wait returned, the new ReplicaSet was the only one with replicas
    after = _replicasets(cluster, "reader")
    assert before[0] not in after and len(after) == 1, (before, after)
    (sources,) = after.values()
    assert sources.startswith("ConfigMap/settings=") and sources != before[1]
    mizzen(cluster, "delete", "deployment", "reader", "-n", NS)
