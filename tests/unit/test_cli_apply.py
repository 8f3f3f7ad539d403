"""apply's decisions (what counts as a change, what an Update carries) and CLI error text."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mizzen.api.defaults import apply_defaults
from mizzen.api.manifest import load_manifests
from mizzen.api.messages import copy_message
from mizzen.cli.apply_cmd import apply_all, differs, merged
from mizzen.cli.runner import error_message
from mizzen.client.errors import UnavailableError, translate
from mizzen.client.objects import ListResult
from protos import objects_pb2 as pb

MANIFEST = """\
apiVersion: mizzen/v1
kind: Pod
metadata: {name: a, labels: {app: x}}
spec:
  processes: [{name: main, command: [/bin/true]}]
"""


def _desired() -> pb.Pod:
    msg = load_manifests(MANIFEST, "pod.yaml")[0].message
    assert isinstance(msg, pb.Pod)
    return msg


def _stored() -> pb.Pod:
    pod = _desired()
    apply_defaults(pod)
    pod.metadata.uid = "u-1"
    pod.metadata.resource_version = "7"
    pod.metadata.creation_timestamp.FromSeconds(1000)
    pod.metadata.finalizers.append("mizzen.io/cleanup")
    pod.status.phase = "Running"
    return pod


def test_defaulted_fields_are_not_a_change() -> None:
    assert not differs(_desired(), _stored())


def test_spec_labels_and_annotations_are_changes() -> None:
    for change in ("spec", "label", "annotation"):
        desired = _desired()
        if change == "spec":
            desired.spec.processes[0].args.append("x")
        elif change == "label":
            desired.metadata.labels["tier"] = "web"
        else:
            desired.metadata.annotations["note"] = "hi"
        assert differs(desired, _stored()), change


def test_status_and_server_fields_are_not_a_change() -> None:
    desired = _desired()
    desired.status.phase = "Failed"
    desired.metadata.uid = "other"
    assert not differs(desired, _stored())


def test_update_carries_version_and_what_the_server_owns() -> None:
    desired = _desired()
    desired.metadata.labels["tier"] = "web"
    new = merged(desired, _stored())
    assert new.metadata.resource_version == "7"
    assert new.metadata.uid == "u-1"
    assert new.metadata.namespace == "default"
    assert new.metadata.creation_timestamp.seconds == 1000
    assert list(new.metadata.finalizers) == ["mizzen.io/cleanup"]
    assert new.status.phase == "Running"
    assert new.metadata.labels["tier"] == "web"


def test_error_messages_use_the_server_text() -> None:
    not_found = translate(grpc.StatusCode.NOT_FOUND, 'pods "a" not found')
    assert error_message(not_found, ["h:1"]) == 'pods "a" not found'
    gone = UnavailableError("no endpoint answered")
    assert error_message(gone, ["h:1", "h:2"]) == (
        "cannot reach the store at h:1,h:2 (no endpoint answered)"
    )


# ---------------------------------------------------------- many objects at once


class FakeObjects:
    """An in-memory Objects API whose answers arrive out of order.

    Each call waits a time that shrinks with the pod's number, so later pods
    finish before earlier ones while several are in flight. ``invalid`` names
    are refused on create, ``missing`` ones are not there to delete, and with
    ``unreachable`` every call fails as a store that cannot be reached.
    """

    def __init__(
        self,
        *,
        invalid: frozenset[str] = frozenset(),
        unreachable: bool = False,
    ) -> None:
        self.stored: dict[tuple[str, str], Any] = {}
        self.invalid = invalid
        self.unreachable = unreachable
        self.in_flight = 0
        self.most_in_flight = 0
        self.calls: list[str] = []
        self.list_denied = False
        self.pages_read = 0

    async def _call(self, what: str, name: str) -> None:
        self.calls.append(f"{what} {name}")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            digits = "".join(c for c in name if c.isdigit())
            await asyncio.sleep(0.001 * (50 - int(digits or 0) % 50))
            if self.unreachable:
                raise UnavailableError("no endpoint answered within 5.0s")
        finally:
            self.in_flight -= 1

    async def get(self, kind: Any, name: str, namespace: str = "") -> Any:
        await self._call("get", name)
        try:
            found = self.stored[(namespace, name)]
        except KeyError:
            raise translate(grpc.StatusCode.NOT_FOUND, f'pods "{name}" not found') from None
        return copy_message(found)

    async def create(self, obj: Any) -> Any:
        name = obj.metadata.name
        await self._call("create", name)
        if name in self.invalid:
            raise translate(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'Pod "{name}" is invalid: spec.processes[0].command: required',
            )
        if (obj.metadata.namespace, name) in self.stored:
            raise translate(grpc.StatusCode.ALREADY_EXISTS, f'pods "{name}" already exists')
        stored = pb.Pod()
        stored.CopyFrom(obj)
        apply_defaults(stored)
        stored.metadata.resource_version = "1"
        self.stored[(obj.metadata.namespace, name)] = stored
        return stored

    async def update(self, obj: Any) -> Any:
        await self._call("update", obj.metadata.name)
        key = (obj.metadata.namespace, obj.metadata.name)
        if key not in self.stored:
            raise translate(grpc.StatusCode.NOT_FOUND, f'pods "{key[1]}" not found')
        if self.stored[key].metadata.resource_version != obj.metadata.resource_version:
            raise translate(grpc.StatusCode.ABORTED, "the object has been modified")
        stored = pb.Pod()
        stored.CopyFrom(obj)
        stored.metadata.resource_version = str(int(obj.metadata.resource_version) + 1)
        self.stored[key] = stored
        return stored

    async def delete(self, kind: Any, name: str, namespace: str = "", **_: Any) -> Any:
        await self._call("delete", name)
        try:
            gone = self.stored.pop((namespace, name))
        except KeyError:
            raise translate(grpc.StatusCode.NOT_FOUND, f'pods "{name}" not found') from None
        return gone, True

    async def list_pages(
        self, kind: Any, namespace: str = "", *, page_size: int = 500, **_: Any
    ) -> AsyncIterator[ListResult]:
        await self._call("list", namespace)
        if self.list_denied:
            raise translate(grpc.StatusCode.PERMISSION_DENIED, "mizzen: not allowed to list")
        names = sorted(name for ns, name in self.stored if ns == namespace)
        for start in range(0, max(len(names), 1), page_size):
            await asyncio.sleep(0)
            page = [self.stored[(namespace, n)] for n in names[start : start + page_size]]
            more = start + page_size < len(names)
            self.pages_read += 1
            yield ListResult([copy_message(obj) for obj in page], "9", "more" if more else "")

    async def __aenter__(self) -> FakeObjects:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _pods(names: list[str]) -> str:
    return "---\n".join(MANIFEST.replace("name: a", f"name: {name}") for name in names)


def _run_cli(
    monkeypatch: pytest.MonkeyPatch, fake: FakeObjects, *argv: str
) -> tuple[int, list[str], list[str]]:
    """`mizzen ARGV` against fake; (exit code, stdout lines, stderr lines)."""
    from mizzen.cli import runner
    from mizzen.cli.main import main

    monkeypatch.setattr(runner, "ObjectsClient", lambda *a, **k: fake)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = main([*argv, "--endpoints", "127.0.0.1:1"])
    return code, out.getvalue().splitlines(), err.getvalue().splitlines()


NAMES = [f"p-{i:02d}" for i in range(40)]


def test_apply_keeps_input_order_and_goes_on_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A bad document in the middle: its line names it, the rest is applied, exit 1."""
    path = tmp_path / "pods.yaml"
    names = [*NAMES[:20], "p-bad", *NAMES[20:]]
    path.write_text(_pods(names))
    fake = FakeObjects(invalid=frozenset({"p-bad"}))

    code, out, err = _run_cli(monkeypatch, fake, "apply", "-f", str(path))

    assert code == 1
    assert out == [f"pod/{name} created" for name in NAMES]
    assert err == [
        f'mizzen: {path}: document 21 (Pod p-bad): Pod "p-bad" is invalid: '
        "spec.processes[0].command: required"
    ]
    assert sorted(name for _, name in fake.stored) == NAMES
    assert fake.most_in_flight > 1  # the answers really did come back out of order


def test_apply_all_interleaves_failures_in_input_order() -> None:
    """Success and failure lines together, as a terminal shows stdout and stderr."""
    manifests = load_manifests(_pods(["p-01", "p-bad", "p-03", "p-04", "p-bad2", "p-49"]))
    for m in manifests:
        m.message.metadata.namespace = "default"  # type: ignore[attr-defined]
    fake = FakeObjects(invalid=frozenset({"p-bad", "p-bad2"}))
    lines: list[str] = []
    summary = asyncio.run(
        apply_all(
            fake,  # type: ignore[arg-type]
            manifests,
            out=lines.append,
            err=lambda line: lines.append(f"ERR {line}"),
            describe=str,
        )
    )
    assert [line.split(":")[0] for line in lines] == [
        "pod/p-01 created",
        "ERR -",
        "pod/p-03 created",
        "pod/p-04 created",
        "ERR -",
        "pod/p-49 created",
    ]
    assert lines[1].startswith("ERR -: document 2 (Pod p-bad): INVALID_ARGUMENT: ")
    assert (summary.failed, summary.not_done) == (2, 0)


def test_apply_window_is_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(_pods(NAMES))
    fake = FakeObjects()
    code, out, _ = _run_cli(monkeypatch, fake, "apply", "-f", str(path), "--max-in-flight", "4")
    assert code == 0
    assert len(out) == len(NAMES)
    assert 1 < fake.most_in_flight <= 4


def test_the_same_object_twice_is_applied_in_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The second copy waits for the first, as it would one after the other."""
    path = tmp_path / "pods.yaml"
    second = MANIFEST.replace("name: p-00", "name: p-00").replace("app: x", "app: y")
    path.write_text(_pods(["p-00", "p-01"]) + "---\n" + second.replace("name: a", "name: p-00"))
    fake = FakeObjects()
    code, out, err = _run_cli(monkeypatch, fake, "apply", "-f", str(path))
    assert (code, err) == (0, [])
    assert out == ["pod/p-00 created", "pod/p-01 created", "pod/p-00 configured"]
    assert fake.stored[("default", "p-00")].metadata.labels["app"] == "y"


def test_apply_stops_once_the_store_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One line for the whole run, not one per object, and no new requests after it:
    with a Get each (10 pods) and with one List first (40 pods)."""
    for names, most_calls in ((NAMES[:10], 4), (NAMES, 1)):
        path = tmp_path / "pods.yaml"
        path.write_text(_pods(names))
        fake = FakeObjects(unreachable=True)
        argv = ("apply", "-f", str(path), "--max-in-flight", "4")
        code, out, err = _run_cli(monkeypatch, fake, *argv)
        assert (code, out) == (1, [])
        assert err == [
            "mizzen: cannot reach the store at 127.0.0.1:1 (no endpoint answered within 5.0s); "
            f"{len(names)} of {len(names)} objects not applied"
        ]
        assert 1 <= len(fake.calls) <= most_calls


def test_delete_keeps_order_and_goes_on_after_a_failure(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(_pods(NAMES))
    fake = FakeObjects()
    assert _run_cli(monkeypatch, fake, "apply", "-f", str(path))[0] == 0
    del fake.stored[("default", "p-07")]

    code, out, err = _run_cli(monkeypatch, fake, "delete", "-f", str(path))
    assert code == 1
    assert out == [f"pod/{name} deleted" for name in NAMES if name != "p-07"]
    assert err == [f'mizzen: {path}: document 8 (Pod p-07): pods "p-07" not found']
    assert fake.stored == {}

    fake.stored[("default", "p-01")] = pb.Pod()
    code, out, err = _run_cli(monkeypatch, fake, "delete", "pod", "p-00", "p-01")
    assert (code, out, err) == (1, ["pod/p-01 deleted"], ['mizzen: pods "p-00" not found'])


# ---------------------------------------------------------- one List instead of a Get each


def _kinds_of_calls(fake: FakeObjects) -> dict[str, int]:
    counts: dict[str, int] = {}
    for call in fake.calls:
        what = call.split()[0]
        counts[what] = counts.get(what, 0) + 1
    return counts


def test_many_objects_of_one_namespace_are_read_with_one_list(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "pods.yaml"
    path.write_text(_pods(NAMES))
    fake = FakeObjects()
    code, out, _ = _run_cli(monkeypatch, fake, "apply", "-f", str(path))
    assert code == 0 and out == [f"pod/{name} created" for name in NAMES]
    assert _kinds_of_calls(fake) == {"list": 1, "create": len(NAMES)}

    fake.calls.clear()
    changed = path.read_text().replace("app: x", "app: y", 3)  # the first three pods
    path.write_text(changed)
    code, out, _ = _run_cli(monkeypatch, fake, "apply", "-f", str(path))
    assert code == 0
    assert out == [f"pod/{n} {'configured' if i < 3 else 'unchanged'}" for i, n in enumerate(NAMES)]
    assert _kinds_of_calls(fake) == {"list": 1, "update": 3}


def test_a_listed_object_that_changed_since_is_read_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Written by someone else after the List (conflict), deleted (not found) or
    created (already exists): each is read again with a Get, as apply did before."""
    path = tmp_path / "pods.yaml"
    path.write_text(_pods(NAMES))
    fake = FakeObjects()
    assert _run_cli(monkeypatch, fake, "apply", "-f", str(path))[0] == 0
    path.write_text(path.read_text().replace("app: x", "app: y"))

    real = fake.list_pages

    async def then_others_write(*args: Any, **kwargs: Any) -> AsyncIterator[ListResult]:
        async for page in real(*args, **kwargs):
            yield page
        fake.stored[("default", "p-01")].metadata.resource_version = "5"
        del fake.stored[("default", "p-02")]
        fake.stored[("default", "p-new")] = copy_message(fake.stored[("default", "p-03")])
        fake.stored[("default", "p-new")].metadata.name = "p-new"

    monkeypatch.setattr(fake, "list_pages", then_others_write)
    path.write_text(path.read_text() + "---\n" + _pods(["p-new"]).replace("app: x", "app: y"))
    fake.calls.clear()
    code, out, err = _run_cli(monkeypatch, fake, "apply", "-f", str(path))
    assert (code, err) == (0, [])
    assert out[:4] == ["pod/p-00 configured", "pod/p-01 configured", "pod/p-02 created",
                       "pod/p-03 configured"]  # fmt: skip
    assert out[-1] == "pod/p-new configured"
    assert sorted(c for c in fake.calls if c.startswith("get")) == [
        "get p-01", "get p-02", "get p-new"
    ]  # fmt: skip


def test_the_second_copy_of_an_object_is_read_with_a_get(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The List is older than the first copy's write."""
    path = tmp_path / "pods.yaml"
    second = MANIFEST.replace("name: a", "name: p-00").replace("app: x", "app: y")
    path.write_text(_pods(NAMES) + "---\n" + second)
    fake = FakeObjects()
    code, out, err = _run_cli(monkeypatch, fake, "apply", "-f", str(path))
    assert (code, err) == (0, [])
    assert out[-1] == "pod/p-00 configured"
    assert fake.stored[("default", "p-00")].metadata.labels["app"] == "y"
    assert [c for c in fake.calls if c.startswith("get")] == ["get p-00"]


def test_few_objects_or_a_crowded_namespace_or_no_list_permission_use_gets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeObjects()
    few = tmp_path / "few.yaml"
    few.write_text(_pods(NAMES[:3]))
    assert _run_cli(monkeypatch, fake, "apply", "-f", str(few))[0] == 0
    assert _kinds_of_calls(fake) == {"get": 3, "create": 3}

    for i in range(3000):  # the namespace holds far more than the file names
        fake.stored[("default", f"other-{i:04d}")] = pb.Pod()
    fake.calls.clear()
    many = tmp_path / "many.yaml"
    many.write_text(_pods(NAMES))
    assert _run_cli(monkeypatch, fake, "apply", "-f", str(many))[0] == 0
    assert _kinds_of_calls(fake) == {"list": 1, "get": len(NAMES), "create": len(NAMES) - 3}
    assert fake.pages_read == 2  # gave up after 500 x 2 objects, 4 x 40 would do

    fake.list_denied = True
    fake.calls.clear()
    code, out, err = _run_cli(monkeypatch, fake, "apply", "-f", str(many))
    assert (code, err) == (0, [])
    assert out == [f"pod/{name} unchanged" for name in NAMES]
    assert _kinds_of_calls(fake) == {"list": 1, "get": len(NAMES)}


def test_configmap_data_is_what_changes() -> None:
    (manifest,) = load_manifests(
        "apiVersion: mizzen/v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {level: debug}\n",
        "cm.yaml",
    )
    desired = manifest.message
    assert isinstance(desired, pb.ConfigMap)
    stored = pb.ConfigMap()
    stored.CopyFrom(desired)
    stored.metadata.namespace = "default"
    stored.metadata.uid = "u-2"
    stored.metadata.resource_version = "9"
    assert not differs(desired, stored)
    stored.data["level"] = "info"
    assert differs(desired, stored)
    update = merged(desired, stored)
    assert dict(update.data) == {"level": "debug"} and update.metadata.resource_version == "9"
