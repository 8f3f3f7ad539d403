"""`mizzen rollout status|history|undo|restart` for Deployments, and `mizzen scale`.

``restart`` (Deployments and DaemonSets) writes the pod template annotation
``mizzen.io/restartedAt`` (RFC 3339, now), as kubectl writes
``kubectl.kubernetes.io/restartedAt``: the template changes, so the normal
rolling update replaces every pod once (a Deployment gets a new revision whose
change cause says it was a restart).

Rollback is a spec change: ``undo`` copies the pod template of an older
ReplicaSet (the previous revision, or ``--to-revision N``) into the
Deployment, and the Deployment controller rolls it out as a new revision.
Errors leave as one readable line (``CommandError``), exit code 1.

ConfigMaps and Secrets are not versioned (docs/controllers.md, "Config
rollouts"): each revision records a digest per object it used
(``mizzen.io/config-sources``), so ``history`` shows which config changed
(CHANGE-CAUSE, and ``--revision N`` compares each object with the current
revision) and ``undo`` says what it cannot restore. A revision that differs
from the current one only in configuration cannot be undone by a template
change: ``undo`` refuses it and says how (put the old content back; the
Deployment then returns to that revision's ReplicaSet by itself).

One file because the rollout subcommands and ``scale`` are one family of
commands on the same objects, sharing the revision, ReplicaSet history and
pod-template helpers.
"""

from __future__ import annotations

import argparse
import datetime
import time
from typing import Any

from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.cli.config import add_credential_flags
from mizzen.cli.convergence import deadline_exceeded
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import UPDATE_ATTEMPTS, change_one, kind_and_name, out, with_objects_client
from mizzen.cli.watching import Watching
from mizzen.client.errors import ConflictError
from mizzen.client.objects import ObjectsClient
from protos import objects_pb2 as pb

HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.mizzen.io/revision"
# controllers.confighash's annotations (the CLI does not import the controllers)
CONFIG_HASH = "mizzen.io/config-hash"
CONFIG_SOURCES = "mizzen.io/config-sources"
CHANGE_CAUSE = "mizzen.io/change-cause"
RESTARTED_AT = "mizzen.io/restartedAt"  # as controllers.rollout.RESTARTED_AT
RESTARTABLE = ("Deployment", "DaemonSet")
ABSENT = "absent"
SCALABLE = ("Deployment", "ReplicaSet")


def add_rollout_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--endpoints", default=None, help="store endpoints host:port,...")
    common.add_argument("--request-timeout", type=float, default=5.0)
    add_credential_flags(common)
    common.add_argument("-n", "--namespace", default=None)

    rollout = sub.add_parser("rollout", help="manage the rollout of a deployment")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True)

    p = rsub.add_parser(
        "status", parents=[common], help="wait for a deployment or daemonset rollout to finish"
    )
    p.add_argument("target", nargs="+", metavar="deploy/NAME|ds/NAME")
    p.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 waits forever")
    p.add_argument("--watch", default="true", choices=["true", "false"], help="keep watching")
    p.set_defaults(func=run_status, client_command=True)

    p = rsub.add_parser("history", parents=[common], help="list the revisions of a deployment")
    p.add_argument("target", nargs="+", metavar="deployment/NAME")
    p.add_argument("--revision", type=int, default=0, help="details of one revision")
    p.set_defaults(func=run_history, client_command=True)

    p = rsub.add_parser("undo", parents=[common], help="roll back to an earlier revision")
    p.add_argument("target", nargs="+", metavar="deployment/NAME")
    p.add_argument("--to-revision", type=int, default=0, help="default: the previous one")
    p.set_defaults(func=run_undo, client_command=True)

    p = rsub.add_parser(
        "restart", parents=[common], help="replace every pod of a deployment or daemonset"
    )
    p.add_argument("target", nargs="+", metavar="deploy/NAME|ds/NAME")
    p.set_defaults(func=run_restart, client_command=True)

    p = sub.add_parser("scale", parents=[common], help="set the replicas of a workload")
    p.add_argument("target", nargs="+", metavar="KIND/NAME")
    p.add_argument("--replicas", type=int, required=True)
    p.set_defaults(func=run_scale, client_command=True)


# ------------------------------------------------------------------ plumbing


def revision_of(obj: Any) -> int:
    value = obj.metadata.annotations.get(REVISION_ANNOTATION, "")
    return int(value) if value.isdigit() else 0


async def owned_replicasets(client: ObjectsClient, d: pb.Deployment) -> list[pb.ReplicaSet]:
    """ReplicaSets controlled by d, by revision."""
    listed = await client.list("replicasets", d.metadata.namespace)
    owned = [
        rs
        for rs in listed.items
        if any(r.controller and r.uid == d.metadata.uid for r in rs.metadata.owner_references)
    ]
    return sorted(owned, key=revision_of)


# ------------------------------------------------------------------ rollout status


def rollout_state(obj: pb.Deployment | pb.DaemonSet) -> tuple[bool, str]:
    """(done, message) as kubectl rollout status words it, for a Deployment or DaemonSet.

    A Deployment whose Progressing condition says ProgressDeadlineExceeded is a
    CommandError (``deployment "web" exceeded its progress deadline``): it will
    not finish by itself.
    """
    if isinstance(obj, pb.DaemonSet):
        return _daemonset_state(obj)
    d = obj
    name = d.metadata.name
    want = d.spec.replicas
    st = d.status
    if d.metadata.generation > st.observed_generation:
        return False, f'Waiting for deployment "{name}" spec update to be observed...'
    if deadline_exceeded(d) is not None:
        raise CommandError(f'deployment "{name}" exceeded its progress deadline')
    if st.updated_replicas < want:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.updated_replicas} out of {want} new replicas have been updated..."
        )
    if st.replicas > st.updated_replicas:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.replicas - st.updated_replicas} old replicas are pending termination..."
        )
    if st.available_replicas < st.updated_replicas:
        return False, (
            f'Waiting for deployment "{name}" rollout to finish: '
            f"{st.available_replicas} of {st.updated_replicas} updated replicas are available..."
        )
    return True, f'deployment "{name}" successfully rolled out'


def _daemonset_state(ds: pb.DaemonSet) -> tuple[bool, str]:
    name = ds.metadata.name
    st = ds.status
    want = st.desired_number_scheduled
    if ds.metadata.generation > st.observed_generation:
        return False, "Waiting for daemon set spec update to be observed..."
    if st.updated_number_scheduled < want:
        return False, (
            f'Waiting for daemon set "{name}" rollout to finish: '
            f"{st.updated_number_scheduled} out of {want} new pods have been updated..."
        )
    if st.number_available < want:
        return False, (
            f'Waiting for daemon set "{name}" rollout to finish: '
            f"{st.number_available} of {want} updated pods are available..."
        )
    return True, f'daemon set "{name}" successfully rolled out'


def run_status(args: argparse.Namespace) -> int:
    """Print each new state until done; watch-driven (one cache of the kind, see
    mizzen.cli.watching), so a change is seen as soon as it is stored."""
    info, name = kind_and_name(args.target, RESTARTABLE)
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        await client.get(info, name, ns)  # not found: the usual one-line error at once
        deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
        timed_out = f'timed out waiting for {info.singular} "{name}" to roll out'
        async with Watching(client) as w:
            w.watch(info.kind, ns)
            try:
                await w.start(deadline)
            except TimeoutError:
                raise CommandError(timed_out) from None
            last = ""
            while True:
                obj = w.get(info.kind, ns, name)
                if obj is None:
                    raise CommandError(f'{info.singular} "{name}" was deleted while waiting')
                done, message = rollout_state(obj)
                if message != last:
                    out(message)
                    last = message
                if done:
                    return 0
                if args.watch == "false":
                    return 1
                if deadline is not None and time.monotonic() >= deadline:
                    raise CommandError(timed_out)
                await w.changed(until=deadline)

    return with_objects_client(args, body)


# ------------------------------------------------------------------ history / undo


def run_history(args: argparse.Namespace) -> int:
    _, name = kind_and_name(args.target, ("Deployment",))
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        d = await client.get("deployments", name, ns)
        history = await owned_replicasets(client, d)
        lines = (
            revision_details(d, history, args.revision)
            if args.revision
            else history_table(d, history)
        )
        for line in lines:
            out(line)
        return 0

    return with_objects_client(args, body)


def history_table(d: pb.Deployment, history: list[pb.ReplicaSet]) -> list[str]:
    """The lines of ``rollout history``: one row per revision, with its change cause."""
    rows = [("REVISION", "REPLICASET", "REPLICAS", "CURRENT", "CHANGE-CAUSE")]
    current = revision_of(d)
    for rs in history:
        rev = revision_of(rs)
        mark = "*" if rev == current else ""
        cause = rs.metadata.annotations.get(CHANGE_CAUSE, "") or "<none>"
        rows.append((str(rev), rs.metadata.name, str(rs.spec.replicas), mark, cause))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [f'deployment "{d.metadata.name}"']
    for row in rows:
        out.append("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return out


def _sources(rs: pb.ReplicaSet) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in rs.metadata.annotations.get(CONFIG_SOURCES, "").split(","):
        obj, sep, digest = part.partition("=")
        if sep and obj:
            out[obj] = digest
    return out


def _current_rs(d: pb.Deployment, history: list[pb.ReplicaSet]) -> pb.ReplicaSet | None:
    current = revision_of(d)
    for rs in history:
        if current and revision_of(rs) == current:
            return rs
    return history[-1] if history else None


def config_differences(target: pb.ReplicaSet, current: pb.ReplicaSet | None) -> list[str]:
    """ "ConfigMap web" for every object both revisions use whose content differs."""
    if current is None or current is target:
        return []
    then, now = _sources(target), _sources(current)
    return [
        obj.replace("/", " ", 1) for obj in sorted(set(then) & set(now)) if then[obj] != now[obj]
    ]


def revision_details(d: pb.Deployment, history: list[pb.ReplicaSet], revision: int) -> list[str]:
    """``rollout history --revision N``: its ReplicaSet, cause, and config per object."""
    target = next((rs for rs in history if revision_of(rs) == revision), None)
    if target is None:
        raise CommandError(
            f'unable to find the specified revision {revision} in history of "{d.metadata.name}"'
        )
    current = _current_rs(d, history)
    now = _sources(current) if current is not None else {}
    cause = target.metadata.annotations.get(CHANGE_CAUSE, "") or "<none>"
    out = [
        f'deployment "{d.metadata.name}" revision {revision}',
        f"  ReplicaSet:    {target.metadata.name} ({target.spec.replicas} replicas)",
        f"  Change-Cause:  {cause}",
    ]
    config_hash = target.spec.template.metadata.annotations.get(CONFIG_HASH, "")
    if not config_hash:
        out.append("  Config:        none counted (no ConfigMap or Secret rolls this template)")
        return out
    out.append(f"  Config hash:   {config_hash}")
    for obj, digest in sorted(_sources(target).items()):
        label = obj.replace("/", " ", 1)
        if current is target:
            state = "absent" if digest == ABSENT else "current"
        elif obj not in now:
            state = "absent then" if digest == ABSENT else "not used by the current revision"
        elif now[obj] == digest:
            state = "same content as the current revision"
        elif digest == ABSENT:
            state = "absent then; exists now"
        else:
            state = "other content than the current revision"
        out.append(f"  Config:        {label}: {state}")
    return out


def run_undo(args: argparse.Namespace) -> int:
    _, name = kind_and_name(args.target, ("Deployment",))
    ns = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        for _ in range(UPDATE_ATTEMPTS):
            d = await client.get("deployments", name, ns)
            history = await owned_replicasets(client, d)
            target, template, notes = plan_undo(d, history, args.to_revision)
            if template is None:
                for line in notes:
                    out(line)
                return 0
            d.spec.template.CopyFrom(template)
            try:
                await client.update(d)
            except ConflictError:
                continue
            out(f"deployment.mizzen/{name} rolled back to revision {revision_of(target)}")
            for line in notes:
                out(line)
            return 0
        raise CommandError(f"deployment/{name} kept changing; try again")

    return with_objects_client(args, body)


def plan_undo(
    d: pb.Deployment, history: list[pb.ReplicaSet], to: int
) -> tuple[pb.ReplicaSet, pb.PodTemplateSpec | None, list[str]]:
    """(the revision to go back to, the template to write or None, lines to print).

    The template is the revision's without the labels, annotations and
    dependsOn the controllers add. A revision that differs only in configuration is a
    CommandError (a template cannot bring old ConfigMap or Secret content back).
    """
    target = _undo_target(d, history, to)
    rev = revision_of(target)
    template = pb.PodTemplateSpec()
    template.CopyFrom(target.spec.template)
    template.metadata.labels.pop(HASH_LABEL, None)
    template.metadata.annotations.pop(CONFIG_HASH, None)
    template.spec.ClearField("depends_on")  # the Deployment's spec.dependsOn, copied
    changed = config_differences(target, _current_rs(d, history))
    if template == d.spec.template:
        if changed:
            raise CommandError(
                f"revision {rev} differs from the current one only in the content of "
                f"{', '.join(changed)}: undo restores pod templates, not ConfigMaps or "
                f"Secrets; put the old content back (e.g. apply its old manifest) and "
                f'deployment "{d.metadata.name}" returns to revision {rev} by itself'
            )
        return (
            target,
            None,
            [
                f"deployment.mizzen/{d.metadata.name} skipped rollback "
                f"(current template already matches revision {rev})"
            ],
        )
    notes = []
    if changed:
        notes.append(
            f"note: ConfigMaps and Secrets are not versioned: revision {rev} ran with other "
            f"content of {', '.join(changed)}; its pods will run with the current content"
        )
    return target, template, notes


def _undo_target(d: pb.Deployment, history: list[pb.ReplicaSet], to: int) -> pb.ReplicaSet:
    if to:
        for rs in history:
            if revision_of(rs) == to:
                return rs
        raise CommandError(
            f'unable to find specified revision {to} in history of "{d.metadata.name}"'
        )
    current = revision_of(d)
    older = [rs for rs in history if 0 < revision_of(rs) < current] if current else history[:-1]
    if not older:
        raise CommandError(f'no rollout history found for deployment "{d.metadata.name}"')
    return older[-1]


# ------------------------------------------------------------------ restart


def restart_stamp(now: datetime.datetime, previous: str = "") -> str:
    """now in RFC 3339 (UTC, seconds); with microseconds when that equals previous, so that
    two restarts within one second still change the template."""
    stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if stamp == previous:
        stamp = now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return stamp


def run_restart(args: argparse.Namespace) -> int:
    info, name = kind_and_name(args.target, RESTARTABLE)
    ns = args.namespace or DEFAULT_NAMESPACE

    def restart(obj: Any) -> bool:
        if info.kind == "Deployment" and obj.spec.paused:
            raise CommandError(
                f"deployment/{name} is paused: a restart would not roll out until it is "
                f"resumed (set spec.paused to false first)"
            )
        annotations = obj.spec.template.metadata.annotations
        annotations[RESTARTED_AT] = restart_stamp(
            datetime.datetime.now(datetime.UTC), annotations.get(RESTARTED_AT, "")
        )
        return True

    async def body(client: ObjectsClient) -> int:
        await change_one(client, info, name, ns, restart)
        out(f"{info.singular}.mizzen/{name} restarted")
        return 0

    return with_objects_client(args, body)


# ------------------------------------------------------------------ scale


def run_scale(args: argparse.Namespace) -> int:
    info, name = kind_and_name(args.target, SCALABLE)
    if args.replicas < 0:
        raise UsageError("--replicas must not be negative")
    ns = args.namespace or DEFAULT_NAMESPACE

    def scale(obj: Any) -> bool:
        obj.spec.replicas = args.replicas
        return True

    async def body(client: ObjectsClient) -> int:
        await change_one(client, info, name, ns, scale)
        out(f"{info.singular}.mizzen/{name} scaled")
        return 0

    return with_objects_client(args, body)


__all__ = [
    "add_rollout_parsers",
    "history_table",
    "plan_undo",
    "restart_stamp",
    "revision_details",
    "rollout_state",
]
