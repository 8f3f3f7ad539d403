"""`mizzen label`, `annotate` and `edit` through the CLI against a real store (no agent).

edit runs with EDITOR set to small shell scripts that rewrite the file with
sed, one of which saves an invalid object first and fixes it when the file is
re-opened with the error at the top.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mizzen.client import ObjectsClient
from mizzen.testing.local_cluster import REPO_ROOT, MizzenCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NS = "labels"
OBJECTS = """\
apiVersion: mizzen/v1
kind: ConfigMap
metadata: {name: one, namespace: labels, labels: {app: web}}
data: {level: debug}
---
apiVersion: mizzen/v1
kind: ConfigMap
metadata: {name: two, namespace: labels, labels: {app: web}}
data: {level: info}
---
apiVersion: mizzen/v1
kind: ConfigMap
metadata: {name: other, namespace: labels, labels: {app: db}}
data: {level: info}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MizzenCluster]:
    with MizzenCluster(1, tmp_path_factory.mktemp("label-store")) as c:
        out = mizzen(c, "apply", "-f", "-", stdin=OBJECTS)
        assert out.returncode == 0, out.stderr
        yield c


@pytest.fixture
async def client(cluster: MizzenCluster) -> AsyncIterator[ObjectsClient]:
    async with ObjectsClient(cluster.endpoints, timeout=10) as c:
        yield c


def mizzen(
    cluster: MizzenCluster, *args: str, stdin: str | None = None, editor: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIZZEN_")}
    env["MIZZEN_ENDPOINTS"] = ",".join(cluster.endpoints)
    if editor:
        env["EDITOR"] = editor
    return subprocess.run(
        [sys.executable, "-m", "mizzen", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO_ROOT,
        env={k: v for k, v in env.items() if v},
    )


async def test_label_sets_removes_refuses_and_overwrites(
    cluster: MizzenCluster, client: ObjectsClient
) -> None:
    out = mizzen(cluster, "label", "cm/one", "tier=front", "team=a", "-n", NS)
    assert (out.returncode, out.stdout, out.stderr) == (0, "configmap/one labeled\n", "")
    cm = await client.get("configmaps", "one", NS)
    assert dict(cm.metadata.labels) == {"app": "web", "tier": "front", "team": "a"}

    out = mizzen(cluster, "label", "cm/one", "tier=back", "-n", NS)
    assert out.returncode == 1
    assert out.stderr == (
        "mizzen: configmap/one: 'tier' already has a value (front), and --overwrite is false\n"
    )
    out = mizzen(cluster, "label", "cm/one", "tier=front", "-n", NS)  # same value: no change
    assert (out.returncode, out.stdout) == (0, "configmap/one not labeled\n")
    out = mizzen(cluster, "label", "cm/one", "tier=back", "team-", "--overwrite", "-n", NS)
    assert (out.returncode, out.stdout) == (0, "configmap/one labeled\n")
    cm = await client.get("configmaps", "one", NS)
    assert dict(cm.metadata.labels) == {"app": "web", "tier": "back"}

    # validation: the store's rules, before anything is sent
    for bad, field in (("Bad Key=x", "labels key 'Bad Key'"), ("k=white space", "label value")):
        out = mizzen(cluster, "label", "cm/one", bad, "-n", NS)
        assert out.returncode == 1 and out.stderr.startswith(f"mizzen: {field}"), out.stderr
        assert out.stderr.count("\n") == 1

    # -l: every ConfigMap it selects, none else
    out = mizzen(cluster, "label", "configmaps", "-l", "app=web", "sel=yes", "-n", NS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["configmap/one labeled", "configmap/two labeled"]
    other = await client.get("configmaps", "other", NS)
    assert "sel" not in other.metadata.labels
    out = mizzen(cluster, "label", "cm", "--all", "sel-", "-n", NS)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.splitlines()) == [
        "configmap/one labeled",
        "configmap/other not labeled",
        "configmap/two labeled",
    ]

    out = mizzen(cluster, "label", "cm/missing", "a=b", "-n", NS)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "not found" in out.stderr


async def test_annotate_takes_any_value_and_conflicts_name_the_key(
    cluster: MizzenCluster, client: ObjectsClient
) -> None:
    note = "deployed by CI, run #42 (see https://ci.example/42)"
    out = mizzen(cluster, "annotate", "configmap", "two", f"note={note}", "-n", NS)
    assert (out.returncode, out.stdout) == (0, "configmap/two annotated\n"), out.stderr
    cm = await client.get("configmaps", "two", NS)
    assert cm.metadata.annotations["note"] == note
    out = mizzen(cluster, "annotate", "cm/two", "note=other", "-n", NS)
    assert out.returncode == 1 and "'note' already has a value" in out.stderr
    out = mizzen(cluster, "annotate", "cm/two", "note-", "-n", NS)
    assert (out.returncode, out.stdout) == (0, "configmap/two annotated\n")
    cm = await client.get("configmaps", "two", NS)
    assert "note" not in cm.metadata.annotations


def editor_script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\nset -e\n" + body)
    path.chmod(0o755)
    return str(path)


def leftover_edit_files() -> list[str]:
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("mizzen-edit-")]


async def test_edit_saves_cancels_and_reopens_an_invalid_file(
    cluster: MizzenCluster, client: ObjectsClient, tmp_path: Path
) -> None:
    before = leftover_edit_files()
    change = editor_script(tmp_path, "change.sh", "sed -i 's/level: info/level: warn/' \"$1\"\n")
    out = mizzen(cluster, "edit", "cm/other", "-n", NS, editor=change)
    assert (out.returncode, out.stdout, out.stderr) == (0, "configmap/other edited\n", "")
    cm = await client.get("configmaps", "other", NS)
    assert cm.data["level"] == "warn"

    out = mizzen(cluster, "edit", "cm/other", "-n", NS, editor="true")
    assert (out.returncode, out.stdout) == (0, "Edit cancelled, no changes made.\n")

    # first save: an invalid label value; the file comes back with the error on top,
    # which the second run of the script sees and fixes
    fix = editor_script(
        tmp_path,
        "fix.sh",
        'if grep -q "^# error:" "$1"; then\n'
        "  grep '^# error:' \"$1\" > " + str(tmp_path / "seen-error") + "\n"
        "  sed -i 's/app: bad value/app: fixed/' \"$1\"\n"
        "else\n"
        "  sed -i 's/app: db/app: bad value/' \"$1\"\n"
        "fi\n",
    )
    out = mizzen(cluster, "edit", "configmap", "other", "-n", NS, editor=fix)
    assert (out.returncode, out.stdout) == (0, "configmap/other edited\n"), out.stderr
    seen = (tmp_path / "seen-error").read_text()
    assert seen.startswith('# error: ConfigMap "other" is invalid: metadata.labels[app]: '), seen
    cm = await client.get("configmaps", "other", NS)
    assert cm.metadata.labels["app"] == "fixed"

    # someone else writes while the editor is open: the file is re-opened with the
    # conflict on top, and saving it as it is then writes it
    racing = editor_script(
        tmp_path,
        "racing.sh",
        'if grep -q "^# error:" "$1"; then\n'
        "  grep '^# error:' \"$1\" > " + str(tmp_path / "conflict") + "\n"
        "else\n"
        f"  {sys.executable} -m mizzen annotate cm/other -n {NS} by=other >/dev/null\n"
        "  sed -i 's/level: warn/level: error/' \"$1\"\n"
        "fi\n",
    )
    out = mizzen(cluster, "edit", "cm/other", "-n", NS, editor=racing)
    assert (out.returncode, out.stdout) == (0, "configmap/other edited\n"), out.stderr
    assert "the object has been modified" in (tmp_path / "conflict").read_text()
    cm = await client.get("configmaps", "other", NS)
    assert cm.data["level"] == "error"

    # a file that is not YAML, never fixed: re-opened, then given up with an error
    broken = editor_script(
        tmp_path, "broken.sh", "grep -q '^# error:' \"$1\" || echo '{' >> \"$1\"\n"
    )
    out = mizzen(cluster, "edit", "cm/other", "-n", NS, editor=broken)
    assert out.returncode == 1
    assert out.stderr == "mizzen: Edit cancelled, no valid changes were saved.\n"
    assert leftover_edit_files() == before
