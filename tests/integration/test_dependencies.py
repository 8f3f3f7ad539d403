"""dependsOn end to end (root): a real store, `mizzen controllers` and a real agent.

* api depends on the db Service: its processes wait (DependenciesNotReady, the
  message naming the Service) and start by themselves once the endpoints
  controller lists a ready db pod in db's Endpoints.
* a chain through a Job and a Deployment (no Endpoints involved): migrate (Job)
  → db (Deployment, Available) → api starts in that order; start times prove it.
* a cycle between two Deployments through their Services is reported (condition
  DependencyCycle on both and on their pods, a Warning Event), nothing starts,
  and breaking the cycle lets both start.
* bad input: a dependency with both service and kind is refused with the field.
* the example application (examples/app/app.yaml, applied at once): db, then
  api, then web start (start times), every web replica answers through an api
  and a db replica on dynamic ports, and when every db pod is deleted api's
  live file for db changes and everything answers again once db is back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from agent_fixtures import AgentProcess, agent_and_controllers, cgroups_unavailable, eventually

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster
from protos import objects_pb2 as pb

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(cgroups_unavailable() is not None, reason=str(cgroups_unavailable())),
]

NS = "deps"
CONDITION = "DependenciesReady"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("deps-store")) as c:
        yield c


def mizzen(
    cluster: MizzenCluster, *args: str, stdin: str | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", ",".join(cluster.endpoints)]
    out = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env
    )
    if ok:
        assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def daemons(
    cluster: MizzenCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    base: Path = tmp_path_factory.mktemp("deps")
    with agent_and_controllers(base, cluster.endpoints, "deps") as agent:
        yield agent


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def deployment(
    name: str, replicas: int = 1, needs: str = "[]", probe: str = "", command: str = "sleep 3600"
) -> str:
    return f"""\
apiVersion: mizzen/v1
kind: Deployment
metadata: {{name: {name}, namespace: {NS}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  dependsOn: {needs}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      processes:
        - name: main
          command: ["/bin/sh", "-c", "{command}"]
          resources: {{limits: {{memory: 64Mi, pids: 16}}}}
{probe}
"""


def service(name: str) -> str:
    return f"""\
apiVersion: mizzen/v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, targetPort: 8000}}]
"""


async def pods_of(client: ObjectsClient, app: str) -> list[pb.Pod]:
    return list((await client.list("pods", NS, label_selector=f"app={app}")).items)


def condition(obj: pb.Pod | pb.Deployment, type_: str = CONDITION) -> pb.Condition | None:
    return next((c for c in obj.status.conditions if c.type == type_), None)


def started_at(pod: pb.Pod) -> float:
    """When the pod's process started (0 while it has not)."""
    state = pod.status.process_statuses[0].state if pod.status.process_statuses else None
    if state is None or not state.HasField("running"):
        return 0.0
    return state.running.started_at.ToNanoseconds() / 1e9


def waiting(pod: pb.Pod) -> tuple[str, str]:
    if not pod.status.process_statuses:
        return ("", "")
    w = pod.status.process_statuses[0].state.waiting
    return (w.reason, w.message)


def ready(pod: pb.Pod) -> bool:
    cond = condition(pod, "Ready")
    return cond is not None and cond.status == "True"


async def test_api_waits_for_the_db_service_and_starts_when_it_has_a_ready_endpoint(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    mizzen(cluster, "apply", "-f", "-", stdin=service("db") + "---\n" + deployment(
        "api", replicas=2, needs="[{service: db}]"
    ))  # fmt: skip
    missing = 'service "db" has no ready endpoints'
    held = await eventually(
        lambda: pods_of(client, "api"),
        lambda ps: (
            len(ps) == 2 and all(waiting(p) == ("DependenciesNotReady", missing) for p in ps)
        ),
        timeout=60,
        what="2 api pods waiting for db",
    )
    for p in held:
        assert p.spec.node_name == daemons.name
        assert [d.service for d in p.spec.depends_on] == ["db"]
        assert p.status.phase == "Pending"
        cond = condition(p)
        assert cond is not None and (cond.status, cond.message) == ("False", missing)
    table = mizzen(cluster, "get", "pods", "-n", NS, "-l", "app=api").stdout
    assert table.count("DependenciesNotReady") == 2, table
    described = mizzen(cluster, "describe", "deploy", "api", "-n", NS).stdout
    assert "Depends On:" in described and "service db" in described, described
    assert missing in described, described

    mizzen(cluster, "apply", "-f", "-", stdin=deployment("db"))
    (db,) = await eventually(
        lambda: pods_of(client, "db"),
        lambda ps: len(ps) == 1 and ready(ps[0]),
        timeout=60,
        what="db ready",
    )
    # the endpoints controller lists the ready db pod in db's Endpoints; then api starts
    api = await eventually(
        lambda: pods_of(client, "api"),
        lambda ps: len(ps) == 2 and all(started_at(p) > 0 for p in ps),
        timeout=30,
        what="api started once db has a ready endpoint",
    )
    endpoints = await client.get("endpoints", "db", NS)
    assert [a.target_ref.name for s in endpoints.subsets for a in s.addresses] == [db.metadata.name]
    for p in api:
        assert started_at(p) > started_at(db)
        cond = condition(p)
        assert cond is not None and cond.status == "True"
    deployed = await client.get("deployments", "api", NS)
    cond = condition(deployed)
    assert cond is not None and cond.status == "True"

    # db goes away: the running api processes are not stopped, their condition says why
    pids = {p.status.process_statuses[0].pid for p in api}
    mizzen(cluster, "scale", "deployment", "db", "--replicas", "0", "-n", NS)
    after = await eventually(
        lambda: pods_of(client, "api"),
        lambda ps: all((c := condition(p)) is not None and c.status == "False" for p in ps),
        timeout=30,
        what="api's condition turning False",
    )
    assert {p.status.process_statuses[0].pid for p in after} == pids
    assert all(started_at(p) > 0 for p in after)
    for name in ("api", "db"):
        mizzen(cluster, "delete", "deployment", name, "-n", NS)


async def test_a_job_then_a_deployment_then_the_api_start_in_order(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    probe = """\
          readinessProbe:
            exec: {command: ["/bin/true"]}
            initialDelaySeconds: 1
            periodSeconds: 1"""
    job = f"""\
apiVersion: mizzen/v1
kind: Job
metadata: {{name: migrate, namespace: {NS}}}
spec:
  template:
    metadata: {{labels: {{app: migrate}}}}
    spec:
      processes: [{{name: main, command: ["/bin/sh", "-c", "sleep 1"]}}]
"""
    manifests = "---\n".join(
        [
            deployment("front", needs="[{kind: Deployment, name: store}]"),
            deployment("store", needs="[{kind: Job, name: migrate}]", probe=probe),
            job,
        ]
    )
    out = mizzen(cluster, "apply", "-f", "-", stdin=manifests).stdout
    assert out.splitlines() == [
        "deployment/front created",
        "deployment/store created",
        "job/migrate created",
    ]

    async def everything() -> dict[str, list[pb.Pod]]:
        return {app: await pods_of(client, app) for app in ("migrate", "store", "front")}

    done = await eventually(
        everything,
        lambda by: all(started_at(p) > 0 for p in by["front"]) and len(by["front"]) == 1,
        timeout=90,
        interval=0.3,
        what="front running",
    )
    (migrate,) = done["migrate"]
    (store,) = done["store"]
    (front,) = done["front"]
    finished = migrate.status.process_statuses[0].state.terminated.finished_at
    assert migrate.status.phase == "Succeeded"
    assert started_at(store) >= finished.ToNanoseconds() / 1e9 - 0.05
    store_ready = condition(store, "Ready")
    assert store_ready is not None and store_ready.status == "True"
    assert started_at(front) >= store_ready.last_transition_time.ToNanoseconds() / 1e9 - 0.05
    assert started_at(store) < started_at(front)
    for kind, name in (("deployment", "front"), ("deployment", "store"), ("job", "migrate")):
        mizzen(cluster, "delete", kind, name, "-n", NS)


async def test_a_cycle_is_reported_and_breaking_it_lets_both_start(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    manifests = "---\n".join(
        [
            service("left"),
            service("right"),
            deployment("left", needs="[{service: right}]"),
            deployment("right", needs="[{service: left}]"),
        ]
    )
    mizzen(cluster, "apply", "-f", "-", stdin=manifests)

    async def both() -> list[pb.Deployment]:
        return [await client.get("deployments", n, NS) for n in ("left", "right")]

    found = await eventually(
        both,
        lambda ds: all(
            (c := condition(d)) is not None and c.reason == "DependencyCycle" for d in ds
        ),
        timeout=60,
        what="both Deployments reported in a cycle",
    )
    left_condition = condition(found[0])
    assert left_condition is not None
    assert left_condition.message.startswith(
        "dependency cycle: Deployment/left -> Service/right -> Deployment/right -> "
        "Service/left -> Deployment/left"
    ), left_condition.message
    held = await eventually(
        lambda: pods_of(client, "left"),
        lambda ps: (
            len(ps) == 1
            and (c := condition(ps[0])) is not None
            and c.reason == "DependencyCycle"
            # the agent writes the waiting process's reason and message after the
            # controller's condition; the reason may already be there from before the
            # controller's first evaluation, with that evaluation's older message
            and waiting(ps[0])[0] == "DependenciesNotReady"
            and waiting(ps[0])[1].startswith("dependency cycle: ")
        ),
        timeout=30,
        what="left's pod reported in the cycle, its process waiting",
    )
    assert waiting(held[0])[1].startswith("dependency cycle: Deployment/left -> Service/right"), (
        waiting(held[0])
    )
    events = mizzen(cluster, "events", "-n", NS, "--for", "deployment/left").stdout
    assert "DependencyCycle" in events, events

    # break it: right no longer depends on left; it starts, and left once right is an endpoint
    mizzen(cluster, "apply", "-f", "-", stdin=deployment("right"))
    (right,) = await eventually(
        lambda: pods_of(client, "right"),
        lambda ps: len(ps) == 1 and ready(ps[0]),
        timeout=60,
        what="right running",
    )
    assert started_at(right) > 0
    # the endpoints controller lists right's ready pod: left starts
    await eventually(
        lambda: pods_of(client, "left"),
        lambda ps: len(ps) == 1 and started_at(ps[0]) > 0,
        timeout=30,
        what="left started",
    )
    cond = condition(await client.get("deployments", "left", NS))
    assert cond is not None and (cond.status, cond.reason) == ("True", "DependenciesMet")
    for name in ("left", "right"):
        mizzen(cluster, "delete", "deployment", name, "-n", NS)


def test_a_bad_dependency_is_refused_naming_the_field(
    cluster: MizzenCluster, daemons: AgentProcess
) -> None:
    bad = deployment("bad", needs="[{service: db, kind: Job, name: db}, {kind: Pod, name: x}]")
    out = mizzen(cluster, "apply", "-f", "-", stdin=bad, ok=False)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1, out.stderr
    assert "spec.dependsOn[0]: may not specify kind or name together with service" in out.stderr
    assert 'spec.dependsOn[1].kind: unsupported value "Pod"' in out.stderr


APP = REPO_ROOT / "examples" / "app" / "app.yaml"
APP_NS = "app"
ANSWER = re.compile(r"^web (web-\S+): visit \d+ \(api (api-\S+), db (db-\S+|\(new\))\)$")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode().strip())


async def _answers(client: ObjectsClient) -> list[str]:
    """One GET to every ready web endpoint."""
    endpoints = await client.get("endpoints", "web", APP_NS)
    urls = [
        f"http://{a.ip}:{port.port}/"
        for s in endpoints.subsets
        for a in s.addresses
        for port in s.ports
    ]
    return [await asyncio.to_thread(_get, url) for url in urls]


async def test_the_example_app_starts_in_order_and_answers_through_api_and_db(
    cluster: MizzenCluster, daemons: AgentProcess, client: ObjectsClient
) -> None:
    mizzen(cluster, "apply", "-f", str(APP), "-n", APP_NS)
    parts = ("db", "api", "web")

    async def all_pods() -> list[pb.Pod]:
        return (await client.list("pods", APP_NS)).items

    pods = await eventually(
        all_pods,
        lambda ps: len(ps) == 8 and all(ready(p) for p in ps),
        timeout=120,
        what="2 db, 3 api and 3 web replicas ready",
    )
    of = {part: [p for p in pods if p.metadata.labels["app"] == part] for part in parts}

    def first_ready(part: str) -> float:
        conds = [condition(p, "Ready") for p in of[part]]
        return min(c.last_transition_time.ToNanoseconds() / 1e9 for c in conds if c)

    first_start = {part: min(started_at(p) for p in of[part]) for part in parts}
    # each part starts only once the part it depends on has a ready replica
    assert first_start["db"] < first_ready("db") <= first_start["api"], first_start
    assert first_ready("api") <= first_start["web"], first_start
    ports = {p.spec.processes[0].ports[0].port for p in pods}
    assert len(ports) == 8 and all(20000 <= port <= 32000 for port in ports), ports

    seen = await eventually(
        lambda: _answers(client), lambda answers: len(answers) == 3, timeout=30, what="3 web"
    )
    webs = {p.metadata.name for p in pods if p.metadata.labels["app"] == "web"}
    apis = {p.metadata.name for p in pods if p.metadata.labels["app"] == "api"}
    matched = [ANSWER.match(a) for a in seen]
    assert all(matched), seen
    assert {m.group(1) for m in matched if m} == webs
    assert {m.group(2) for m in matched if m} <= apis

    # every db pod goes: api's live file for db changes, and all answers again once db is back
    api = next(p for p in pods if p.metadata.labels["app"] == "api")
    live = (
        daemons.data_dir / "poddirs" / f"{APP_NS}_{api.metadata.name}_{api.metadata.uid}"
        / "services" / "db.json"
    )  # fmt: skip
    before = json.loads(live.read_text())
    old_db = {e["pod"] for e in before["endpoints"]}
    assert len(old_db) == 2, before
    for p in pods:
        if p.metadata.labels["app"] == "db":
            await client.delete("pods", p.metadata.name, APP_NS)
    await eventually(
        lambda: asyncio.to_thread(lambda: json.loads(live.read_text())),
        lambda now: (
            {e["pod"] for e in now["endpoints"]}.isdisjoint(old_db) and len(now["endpoints"]) == 2
        ),
        timeout=60,
        what="api's live file listing the 2 new db pods",
    )
    again = await eventually(
        lambda: _answers(client),
        lambda answers: (
            len(answers) == 3
            and all((m := ANSWER.match(a)) and m.group(3) not in old_db for a in answers)
        ),
        timeout=60,
        what="every web answering through a new db pod",
    )
    assert len(again) == 3
    mizzen(cluster, "delete", "-f", str(APP), "-n", APP_NS)
