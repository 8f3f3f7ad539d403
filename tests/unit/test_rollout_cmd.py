"""`rollout history` and `rollout undo` over revisions made by config changes and template edits.

The revisions are made by the real Deployment controller on FakeObjects; the
CLI's pure parts (history_table, revision_details, plan_undo) read them.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controllers.deployment import DeploymentController
from controllers.manager import ManagerConfig
from controllers.rollout import revision_of
from controllers.testing import FakeObjects, drain, fake_context
from mizzen.cli.errors import CommandError
from mizzen.cli.rollout_cmd import (
    RESTARTED_AT,
    history_table,
    plan_undo,
    restart_stamp,
    revision_details,
    rollout_state,
)
from protos import objects_pb2 as pb


class Revisions:
    """A Deployment using ConfigMap web-config, driven by the controller."""

    def __init__(self) -> None:
        d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace="default"))
        d.spec.replicas = 2
        d.spec.selector.match_labels["app"] = "web"
        d.spec.template.metadata.labels["app"] = "web"
        proc = d.spec.template.spec.processes.add(name="main", command=["/bin/server", "v1"])
        proc.env_from.add().config_map_ref.name = "web-config"
        cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="web-config", namespace="default"))
        cm.data["level"] = "debug"
        self.objects = FakeObjects()
        self.objects.add(d, cm)
        self.ctx = fake_context(self.objects, config=ManagerConfig(options={"config.debounce": 0}))
        self.controller = DeploymentController()
        self.controller.setup(self.ctx)

    async def settle(self) -> None:
        await drain(self.controller, self.ctx)

    async def set_level(self, level: str) -> None:
        cm = await self.objects.get("configmaps", "web-config", "default")
        cm.data["level"] = level
        await self.objects.update(cm)
        await self.settle()

    async def set_version(self, version: str, cause: str = "") -> None:
        d = await self.objects.get("deployments", "web", "default")
        d.spec.template.spec.processes[0].command[1] = version
        if cause:
            d.metadata.annotations["mizzen.io/change-cause"] = cause
        await self.objects.update(d)
        await self.settle()

    async def restart(self, stamp: str) -> None:
        """What `mizzen rollout restart` writes."""
        d = await self.objects.get("deployments", "web", "default")
        d.spec.template.metadata.annotations[RESTARTED_AT] = stamp
        await self.objects.update(d)
        await self.settle()

    def deployment(self) -> pb.Deployment:
        d = self.objects.peek("deployments", "web", "default")
        assert d is not None
        return d

    def history(self) -> list[pb.ReplicaSet]:
        return sorted(self.objects.objects("replicasets"), key=revision_of)

    async def undo(self, to: int = 0) -> tuple[int, list[str]]:
        """Run plan_undo and write its template as the CLI does; (target revision, lines)."""
        target, template, notes = plan_undo(self.deployment(), self.history(), to)
        if template is not None:
            d = self.deployment()
            d.spec.template.CopyFrom(template)
            await self.objects.update(d)
            await self.settle()
        return revision_of(target), notes


async def revisions() -> Revisions:
    r = Revisions()
    await r.settle()
    return r


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.split("   ") if c.strip()]


async def test_history_names_the_config_that_changed() -> None:
    r = await revisions()
    await r.set_level("info")
    await r.set_version("v2", cause="server v2")
    lines = history_table(r.deployment(), r.history())
    assert cells(lines[1]) == ["REVISION", "REPLICASET", "REPLICAS", "CURRENT", "CHANGE-CAUSE"]
    rows = [cells(line) for line in lines[2:]]
    assert [(row[0], row[-1]) for row in rows] == [
        ("1", "<none>"),
        ("2", "config: ConfigMap web-config changed"),
        ("3", "server v2"),
    ]
    assert rows[2][3] == "*"


async def test_revision_details_compare_each_object_with_the_current_revision() -> None:
    r = await revisions()
    await r.set_level("info")
    await r.set_version("v2")
    one = revision_details(r.deployment(), r.history(), 1)
    assert one[0] == 'deployment "web" revision 1'
    assert "  Config:        ConfigMap web-config: other content than the current revision" in one
    two = revision_details(r.deployment(), r.history(), 2)
    assert "  Config:        ConfigMap web-config: same content as the current revision" in two
    assert "  Change-Cause:  config: ConfigMap web-config changed" in two
    with pytest.raises(CommandError, match="unable to find the specified revision 7"):
        revision_details(r.deployment(), r.history(), 7)


async def test_undo_of_a_config_only_revision_is_refused_with_the_way_back() -> None:
    r = await revisions()
    await r.set_level("info")
    with pytest.raises(CommandError) as info:
        plan_undo(r.deployment(), r.history(), 0)
    message = str(info.value)
    assert (
        "revision 1 differs from the current one only in the content of ConfigMap web-config"
        in (message)
    )
    assert "put the old content back" in message
    # ... which is the way back: the first ReplicaSet returns, as revision 3
    await r.set_level("debug")
    history = r.history()
    assert len(history) == 2 and revision_of(history[-1]) == 3
    assert history[-1].metadata.annotations["mizzen.io/change-cause"] == (
        "config: ConfigMap web-config changed"
    )


async def test_undo_restores_the_template_and_says_the_config_is_current() -> None:
    r = await revisions()
    await r.set_version("v2")
    await r.set_level("info")  # revision 3: v2 with the new content
    target, notes = await r.undo(to=1)
    assert target == 1
    assert notes == [
        "note: ConfigMaps and Secrets are not versioned: revision 1 ran with other content of "
        "ConfigMap web-config; its pods will run with the current content"
    ]
    d = r.deployment()
    assert d.spec.template.spec.processes[0].command[1] == "v1"
    assert "mizzen.io/config-hash" not in d.spec.template.metadata.annotations
    newest = r.history()[-1]
    assert revision_of(newest) == 4  # v1 with today's content: a new ReplicaSet, not revision 1's
    assert len(r.history()) == 4


async def test_undo_with_unchanged_config_goes_back_to_the_old_replicaset() -> None:
    r = await revisions()
    first = r.history()[0].metadata.name
    await r.set_version("v2")
    target, notes = await r.undo()
    assert (target, notes) == (1, [])
    newest = r.history()[-1]
    assert newest.metadata.name == first and revision_of(newest) == 3
    skipped: Any = plan_undo(r.deployment(), r.history(), 3)
    assert skipped[1] is None and "skipped rollback" in skipped[2][0]


def test_restart_stamp_is_rfc3339_and_always_new() -> None:
    now = datetime.datetime(2026, 12, 7, 23, 59, 1, 250000, tzinfo=datetime.UTC)
    assert restart_stamp(now) == "2026-12-07T23:59:01Z"
    assert restart_stamp(now, "2026-12-07T23:59:01Z") == "2026-12-07T23:59:01.250000Z"
    assert datetime.datetime.fromisoformat(restart_stamp(now)) == now.replace(microsecond=0)


async def test_restart_is_a_new_revision_whose_cause_says_restart() -> None:
    r = await revisions()
    await r.set_version("v2", cause="server v2")
    await r.restart("2026-12-07T23:59:01Z")
    history = r.history()
    assert [revision_of(rs) for rs in history] == [1, 2, 3]
    assert history[-1].spec.template.metadata.annotations[RESTARTED_AT] == "2026-12-07T23:59:01Z"
    rows = [cells(line) for line in history_table(r.deployment(), history)[2:]]
    assert [(row[0], row[-1]) for row in rows] == [
        ("1", "<none>"),
        ("2", "server v2"),
        ("3", "restart: mizzen rollout restart at 2026-12-07T23:59:01Z"),
    ]
    # a template change together with a new stamp is the user's change, not a restart
    d = await r.objects.get("deployments", "web", "default")
    d.spec.template.metadata.annotations[RESTARTED_AT] = "2026-12-08T00:00:00Z"
    d.spec.template.spec.processes[0].command[1] = "v3"
    d.metadata.annotations["mizzen.io/change-cause"] = "server v3"
    await r.objects.update(d)
    await r.settle()
    assert r.history()[-1].metadata.annotations["mizzen.io/change-cause"] == "server v3"


# ------------------------------------------------------------------ rollout status


def _rolling(*, updated: int, available: int, generation: int = 2) -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace="default"))
    d.metadata.generation = 2
    d.spec.replicas = 3
    d.status.observed_generation = generation
    d.status.replicas = 3
    d.status.updated_replicas = updated
    d.status.available_replicas = available
    return d


def test_rollout_state_of_a_deployment_in_kubectls_words() -> None:
    assert rollout_state(_rolling(updated=3, available=3, generation=1)) == (
        False,
        'Waiting for deployment "web" spec update to be observed...',
    )
    assert rollout_state(_rolling(updated=1, available=1)) == (
        False,
        'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been '
        "updated...",
    )
    assert rollout_state(_rolling(updated=3, available=2)) == (
        False,
        'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...',
    )
    assert rollout_state(_rolling(updated=3, available=3)) == (
        True,
        'deployment "web" successfully rolled out',
    )


def test_rollout_state_fails_once_the_progress_deadline_is_exceeded() -> None:
    d = _rolling(updated=3, available=0)
    d.status.conditions.add(
        type="Progressing",
        status="False",
        reason="ProgressDeadlineExceeded",
        message='ReplicaSet "web-5d9c" has timed out progressing.',
    )
    with pytest.raises(CommandError, match=r'^deployment "web" exceeded its progress deadline$'):
        rollout_state(d)
    # a spec change not yet observed may have restarted the rollout: not judged on old status
    d.metadata.generation = 3
    assert rollout_state(d)[0] is False
    # Progressing True (still progressing) is no failure
    d.metadata.generation = 2
    d.status.conditions[0].status = "True"
    d.status.conditions[0].reason = "ReplicaSetUpdated"
    assert rollout_state(d)[0] is False


def test_rollout_state_of_a_daemonset_in_kubectls_words() -> None:
    ds = pb.DaemonSet(metadata=pb.ObjectMeta(name="agent", namespace="default", generation=2))
    st = ds.status
    st.observed_generation, st.desired_number_scheduled = 1, 2
    assert rollout_state(ds) == (False, "Waiting for daemon set spec update to be observed...")
    st.observed_generation, st.updated_number_scheduled = 2, 1
    assert rollout_state(ds) == (
        False,
        'Waiting for daemon set "agent" rollout to finish: 1 out of 2 new pods have been '
        "updated...",
    )
    st.updated_number_scheduled, st.number_available = 2, 1
    assert rollout_state(ds) == (
        False,
        'Waiting for daemon set "agent" rollout to finish: 1 of 2 updated pods are available...',
    )
    st.number_available = 2
    assert rollout_state(ds) == (True, 'daemon set "agent" successfully rolled out')
