"""The real `mizzen` command (a subprocess) against a real one-node store.

One store serves the module; tests that write use their own namespace so they
do not see each other's objects. Errors are checked by exit code and the one
stderr line the CLI promises (see mizzen/cli/objects_cmd.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from mizzen.cli.runner import error_message
from mizzen.client.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
)
from mizzen.client.objects import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster, free_ports
from protos import objects_api_pb2 as api
from protos import objects_api_pb2_grpc as api_grpc
from protos import objects_pb2 as pb

pytestmark = pytest.mark.integration

WEB = REPO_ROOT / "examples" / "web.yaml"

POD = """\
apiVersion: mizzen/v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  processes:
    - name: main
      command: ["/bin/sleep", "100"]
      resources:
        limits: {{memory: {memory}}}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("cli")) as c:
        yield c


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def run(
    cluster: MizzenCluster | None,
    home: Path,
    *args: str,
    endpoints: str | None = None,
    stdin: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["HOME"] = str(home)  # no ~/.mizzen/config of the person running the tests
    env["PYTHONPATH"] = str(REPO_ROOT)
    eps = endpoints or ",".join(cluster.endpoints if cluster else [])
    argv = [sys.executable, "-m", "mizzen", *args, "--endpoints", eps]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess[str]) -> str:
    """The single error text after "mizzen: " (exit code 1, no traceback)."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("mizzen: "), result.stderr
    return result.stderr.removeprefix("mizzen: ")


def test_apply_created_unchanged_configured(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    ns = ["-n", "cycle"]
    assert ok(run(cluster, home, "apply", "-f", str(WEB), *ns)) == "deployment/web created\n"
    assert ok(run(cluster, home, "apply", "-f", str(WEB), *ns)) == "deployment/web unchanged\n"

    edited = tmp_path / "web.yaml"
    edited.write_text(WEB.read_text().replace("replicas: 1", "replicas: 3"))
    assert ok(run(cluster, home, "apply", "-f", str(edited), *ns)) == "deployment/web configured\n"
    assert ok(run(cluster, home, "apply", "-f", str(edited), *ns)) == "deployment/web unchanged\n"

    got = json.loads(ok(run(cluster, home, "get", "deploy", "web", "-o", "json", *ns)))
    assert got["kind"] == "Deployment"
    assert got["spec"]["replicas"] == 3
    assert got["metadata"]["namespace"] == "cycle"
    assert got["metadata"]["uid"]

    again = run(cluster, home, "apply", "-f", "-", stdin=json.dumps(got))
    assert ok(again) == "deployment/web unchanged\n"
    # the json of the object kept its uid and creation time through "configured"
    after = json.loads(ok(run(cluster, home, "get", "deployments", "web", "-o", "json", *ns)))
    assert after["metadata"]["uid"] == got["metadata"]["uid"]
    assert after["metadata"]["resourceVersion"] == got["metadata"]["resourceVersion"]

    table = ok(run(cluster, home, "get", "deployments", *ns)).splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert table[1].split()[:4] == ["web", "0/3", "0", "0"]
    assert len(table) == 2

    assert ok(run(cluster, home, "get", "deploy", "-o", "name", *ns)) == "deployment/web\n"
    everywhere = ok(run(cluster, home, "get", "deploy", "-A")).splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == ["cycle", "web"] for line in everywhere)

    assert ok(run(cluster, home, "delete", "-f", str(edited), *ns)) == "deployment/web deleted\n"
    missing = failed(run(cluster, home, "get", "deploy", "web", *ns))
    assert missing == 'deployments "web" not found\n'


def test_pods_get_by_label_yaml_and_delete(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    ns = ["-n", "pods"]
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(
        POD.format(name="a", app="x", memory="32Mi")
        + "---\n"
        + POD.format(name="b", app="y", memory="32Mi")
    )
    assert ok(run(cluster, home, "apply", "-f", str(manifest), *ns)) == (
        "pod/a created\npod/b created\n"
    )

    table = ok(run(cluster, home, "get", "po", *ns)).splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "NODE", "AGE"]
    assert [line.split()[:5] for line in table[1:]] == [
        ["a", "0/1", "Pending", "0", "<none>"],
        ["b", "0/1", "Pending", "0", "<none>"],
    ]
    selected = ok(run(cluster, home, "get", "pods", "-l", "app=x", *ns)).splitlines()
    assert [line.split()[0] for line in selected] == ["NAME", "a"]

    none = run(cluster, home, "get", "pods", "-l", "app=z", *ns)
    assert ok(none) == ""
    assert none.stderr == "No resources found in pods namespace.\n"

    doc = yaml.safe_load(ok(run(cluster, home, "get", "pod", "a", "-o", "yaml", *ns)))
    assert doc["kind"] == "Pod"
    assert doc["metadata"]["labels"] == {"app": "x"}
    assert doc["spec"]["processes"][0]["resources"]["limits"]["memory"] == "32Mi"
    reapplied = run(cluster, home, "apply", "-f", "-", stdin=yaml.safe_dump(doc))
    assert ok(reapplied) == "pod/a unchanged\n"

    out = ok(run(cluster, home, "delete", "pod", "a", "b", "--grace-period", "0", *ns))
    assert out == "pod/a deleted\npod/b deleted\n"
    assert failed(run(cluster, home, "delete", "pod", "a", *ns)) == 'pods "a" not found\n'


def test_bad_quantity_is_a_manifest_error(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(POD.format(name="q", app="x", memory="12Qi"))
    text = failed(run(cluster, home, "apply", "-f", str(manifest)))
    assert text == (
        f"{manifest}: document 1 (Pod q): spec.processes[0].resources.limits.memory: "
        'invalid quantity "12Qi"\n'
    )


def test_server_side_invalid_names_the_field(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "bad-name.yaml"
    manifest.write_text(POD.format(name="Web_1", app="x", memory="32Mi"))
    text = failed(run(cluster, home, "apply", "-f", str(manifest)))
    assert text.startswith(
        f'{manifest}: document 1 (Pod Web_1): Pod "Web_1" is invalid: metadata.name: '
    )
    assert text.count("\n") == 1


def test_apply_goes_on_after_a_bad_document(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    """The server refuses the second of three pods; the others are created, exit code 1."""
    ns = ["-n", "partial"]
    manifest = tmp_path / "three.yaml"
    manifest.write_text(
        "---\n".join(POD.format(name=n, app="x", memory="32Mi") for n in ("a", "Bad_1", "c"))
    )
    result = run(cluster, home, "apply", "-f", str(manifest), *ns)
    assert result.stdout == "pod/a created\npod/c created\n"
    text = failed(result)
    assert text.startswith(f'{manifest}: document 2 (Pod Bad_1): Pod "Bad_1" is invalid: ')
    assert text.count("\n") == 1
    names = ok(run(cluster, home, "get", "pods", "-o", "name", *ns))
    assert names == "pod/a\npod/c\n"

    deleted = run(cluster, home, "delete", "-f", str(manifest), *ns)
    assert deleted.stdout == "pod/a deleted\npod/c deleted\n"
    assert failed(deleted) == f'{manifest}: document 2 (Pod Bad_1): pods "Bad_1" not found\n'


@pytest.mark.timeout(300)
def test_apply_of_2000_pods_then_get_lists_them_all(
    cluster: MizzenCluster, home: Path, tmp_path: Path
) -> None:
    """Many objects in one file go through the concurrent apply; every one arrives."""
    count = 2000
    manifest = tmp_path / "many.yaml"
    manifest.write_text(
        "---\n".join(POD.format(name=f"p-{i:04d}", app="many", memory="32Mi") for i in range(count))
    )
    ns = ["-n", "many"]
    result = run(cluster, home, "apply", "-f", str(manifest), *ns, timeout=120)
    assert ok(result).splitlines() == [f"pod/p-{i:04d} created" for i in range(count)]

    listed = json.loads(ok(run(cluster, home, "get", "pods", "-o", "json", *ns)))
    assert sorted(item["metadata"]["name"] for item in listed["items"]) == [
        f"p-{i:04d}" for i in range(count)
    ]
    again = run(cluster, home, "apply", "-f", str(manifest), *ns, timeout=120)
    assert ok(again).splitlines() == [f"pod/p-{i:04d} unchanged" for i in range(count)]


def test_unknown_kind(cluster: MizzenCluster, home: Path) -> None:
    text = failed(run(cluster, home, "get", "widgets"))
    assert text.startswith("unknown kind 'widgets'; known kinds: nodes, pods,")


def test_unreachable_store(home: Path) -> None:
    (port,) = free_ports(1)
    result = run(None, home, "get", "pods", "--request-timeout", "1", endpoints=f"127.0.0.1:{port}")
    assert failed(result).startswith(f"cannot reach the store at 127.0.0.1:{port} (")
    version = run(None, home, "version", "--request-timeout", "1", endpoints=f"127.0.0.1:{port}")
    assert version.stdout.startswith("Client Version: mizzen ")
    assert failed(version).startswith(f"cannot reach the store at 127.0.0.1:{port}")


def test_version_and_api_resources(cluster: MizzenCluster, home: Path) -> None:
    lines = ok(run(cluster, home, "version")).splitlines()
    assert lines[0].startswith("Client Version: mizzen ")
    assert lines[1].startswith(f"Server: {cluster.endpoints[0]}")
    table = ok(run(cluster, home, "api-resources")).splitlines()
    assert table[0].split() == ["NAME", "SHORTNAMES", "NAMESPACED", "KIND"]
    assert table[2].split() == ["pods", "po", "true", "Pod"]


# ---------------------------------------------------------- the client underneath


def _deployment(name: str, ns: str) -> pb.Deployment:
    obj = pb.Deployment(metadata=pb.ObjectMeta(name=name, namespace=ns))
    obj.spec.selector.match_labels["app"] = name
    obj.spec.template.metadata.labels["app"] = name
    obj.spec.template.spec.processes.add(name="main", command=["/bin/sleep", "100"])
    return obj


def test_client_errors_and_pages(cluster: MizzenCluster) -> None:
    async def scenario() -> None:
        async with ObjectsClient(cluster.endpoints) as client:
            first = await client.create(_deployment("dup", "client"))
            assert first.metadata.resource_version
            with pytest.raises(AlreadyExistsError) as exists:
                await client.create(_deployment("dup", "client"))
            assert error_message(exists.value, []) == 'deployments "dup" already exists'

            stale = pb.Deployment()
            stale.CopyFrom(first)
            first.spec.replicas = 4
            await client.update(first)
            stale.spec.replicas = 5
            with pytest.raises(ConflictError):
                await client.update(stale)

            bad = _deployment("Bad_Name", "client")
            with pytest.raises(InvalidArgumentError) as invalid:
                await client.create(bad)
            assert "metadata.name" in error_message(invalid.value, [])

            for i in range(5):
                await client.create(_deployment(f"page-{i}", "client"))
            page = await client.list("deploy", "client", limit=2)
            assert len(page.items) == 2 and page.continue_token
            everything = await client.list("deployments", "client")
            names = [d.metadata.name for d in everything.items]
            assert names == ["dup", *(f"page-{i}" for i in range(5))]
            assert everything.continue_token == ""

            pages = [p async for p in client.list_pages("deploy", "client", page_size=4)]
            assert [len(p.items) for p in pages] == [4, 2]
            assert [d.metadata.name for p in pages for d in p.items] == names
            assert {p.resource_version for p in pages} == {everything.resource_version}
            async for _ in client.list_pages("deploy", "client", page_size=1):
                break  # the second page, already asked for, is cancelled

            _, gone = await client.delete("deploy", "dup", "client")
            assert gone
            with pytest.raises(NotFoundError):
                await client.get("deploy", "dup", "client")

    asyncio.run(scenario())


def test_client_watch_from_a_list(cluster: MizzenCluster) -> None:
    async def scenario() -> None:
        async with ObjectsClient(cluster.endpoints) as client:
            listed = await client.list("deploy", "watched")
            events = client.watch("deploy", "watched", resource_version=listed.resource_version)
            await client.create(_deployment("w", "watched"))
            await client.delete("deploy", "w", "watched")
            seen = []
            async with asyncio.timeout(10):
                async for kind, obj in events:
                    seen.append((kind, obj.metadata.name))
                    if kind == "DELETED":
                        break
            assert seen == [("ADDED", "w"), ("DELETED", "w")]

    asyncio.run(scenario())


def test_delete_cascade_orphan_keeps_the_object_until_its_finalizer_goes(
    cluster: MizzenCluster, home: Path
) -> None:
    with grpc.insecure_channel(cluster.endpoints[0]) as channel:
        stub = api_grpc.ObjectsStub(channel)
        stub.Create(
            api.CreateRequest(object=api.Object(deployment=_deployment("keep", "cascade"))),
            timeout=10,
        )
    ns = ["-n", "cascade"]
    out = ok(run(cluster, home, "delete", "deploy", "keep", "--cascade", "orphan", *ns))
    assert out == "deployment/keep deleting\n"
    doc = yaml.safe_load(ok(run(cluster, home, "get", "deploy", "keep", "-o", "yaml", *ns)))
    assert doc["metadata"]["finalizers"] == ["orphan"]
    assert "deletionTimestamp" in doc["metadata"]
    bad = run(cluster, home, "delete", "deploy", "keep", "--cascade", "sideways", *ns)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_nothing_listening_is_reported_before_the_deadline(home: Path) -> None:
    (port,) = free_ports(1)
    for command in (["get", "pods"], ["version"]):
        result = run(None, home, *command, endpoints=f"127.0.0.1:{port}")
        text = failed(result)
        assert text.startswith(f"cannot reach the store at 127.0.0.1:{port} (")
        assert f"nothing is listening at 127.0.0.1:{port})" in text
        assert "is the store running there?" in text
        assert "within 5.0s" not in text  # not the deadline's error
        assert text.count("\n") == 1
    assert result.stdout == "Client Version: mizzen 0.1.0\n"


def test_a_store_that_starts_listening_within_the_window_answers(cluster: MizzenCluster) -> None:
    """A port that refuses connections, then (0.3 s in) forwards to the real store."""
    (port,) = free_ports(1)
    target_host, target_port = cluster.endpoints[0].rsplit(":", 1)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def scenario() -> None:
        async def listen_later() -> asyncio.Server:
            await asyncio.sleep(0.3)
            return await asyncio.start_server(forward, "127.0.0.1", port)

        opening = asyncio.create_task(listen_later())
        async with ObjectsClient([f"127.0.0.1:{port}"], timeout=5.0) as client:
            listed = await client.list("pods", "default")
        server = await opening
        server.close()
        assert listed.resource_version

    asyncio.run(scenario())
