"""controllers/confighash.py: what a template counts, the keyed content hash, digests, mapping."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from controllers.base import BY_CONFIG_REF
from controllers.config_watch import watch_config
from controllers.confighash import (
    ABSENT,
    CACHED_AS,
    CONFIG_RELOAD,
    ConfigState,
    config_state,
    content_digests,
    counted_refs,
    describe_change,
    digested,
    parse_sources,
    ref_value,
    same_content,
)
from controllers.testing import FakeObjects, fake_context
from protos import objects_pb2 as pb

KEY = b"k" * 32


def cm(name: str = "web-config", **data: str) -> pb.ConfigMap:
    out = pb.ConfigMap(metadata=pb.ObjectMeta(name=name, namespace="default"))
    out.data.update(data)
    return out


def secret(name: str = "db", **data: bytes) -> pb.Secret:
    out = pb.Secret(metadata=pb.ObjectMeta(name=name, namespace="default"))
    out.data.update(data)
    return out


def template(
    *,
    env: tuple[tuple[str, str], ...] = (),
    secret_env: tuple[tuple[str, str], ...] = (),
    env_from: tuple[str, ...] = (),
    volume: str = "",
    items: tuple[str, ...] = (),
    secret_volume: str = "",
    reload: str = "",
) -> pb.PodTemplateSpec:
    t = pb.PodTemplateSpec()
    t.metadata.labels["app"] = "web"
    if reload:
        t.metadata.annotations[CONFIG_RELOAD] = reload
    proc = t.spec.processes.add(name="main", command=["/bin/server"])
    for name, key in env:
        var = proc.env.add(name=key.upper())
        var.value_from.config_map_key_ref.name = name
        var.value_from.config_map_key_ref.key = key
    for name, key in secret_env:
        var = proc.env.add(name=key.upper())
        var.value_from.secret_key_ref.name = name
        var.value_from.secret_key_ref.key = key
    for name in env_from:
        proc.env_from.add().config_map_ref.name = name
    if volume:
        vol = t.spec.volumes.add(name="conf")
        vol.config_map.name = volume
        for key in items:
            vol.config_map.items.add(key=key, path=key)
        proc.volume_mounts.add(name="conf", mount_path="conf")
    if secret_volume:
        vol = t.spec.volumes.add(name="certs")
        vol.secret.secret_name = secret_volume
        proc.volume_mounts.add(name="certs", mount_path="certs")
    return t


def state(t: pb.PodTemplateSpec, *objs: Any, key: bytes = KEY) -> ConfigState:
    by_name = {(type(o).__name__, o.metadata.name): o for o in objs}
    return config_state(t, "default", lambda kind, _ns, name: by_name.get((kind, name)), key)


# ------------------------------------------------------------------ what is counted


def test_counted_refs_scope_by_use() -> None:
    t = template(env=(("a", "level"), ("b", "x")), env_from=("b",), volume="c", items=("f",))
    assert counted_refs(t) == {
        ("ConfigMap", "a"): frozenset({"level"}),
        ("ConfigMap", "b"): None,  # envFrom: every key, whatever env also picks
        ("ConfigMap", "c"): frozenset({"f"}),
    }
    assert counted_refs(template(volume="c")) == {("ConfigMap", "c"): None}
    assert counted_refs(template()) == {}


def test_reload_annotation_drops_volume_only_references() -> None:
    t = template(volume="files", secret_volume="tls", env=(("vars", "level"),), reload="signal:HUP")
    assert set(counted_refs(t)) == {("ConfigMap", "vars")}
    both = template(volume="shared", env=(("shared", "level"),), reload="signal:SIGHUP")
    assert counted_refs(both) == {("ConfigMap", "shared"): frozenset({"level"})}
    not_a_signal = template(volume="files", reload="restart")
    assert set(counted_refs(not_a_signal)) == {("ConfigMap", "files")}


# ------------------------------------------------------------------ the hash


def test_hash_is_stable_across_key_order_and_cache_digests() -> None:
    t = template(env_from=("web-config",))
    a = cm(x="1", y="2")
    b = pb.ConfigMap(metadata=pb.ObjectMeta(name="web-config", namespace="default"))
    b.data["y"] = "2"
    b.data["x"] = "1"
    b.metadata.labels["unrelated"] = "metadata"
    b.metadata.resource_version = "99"
    first = state(t, a)
    assert first.hash and len(first.hash) == 32
    assert state(t, b) == first
    assert state(t, digested(a)) == first  # what the controllers' informers hold
    assert state(t, digested(digested(a))) == first


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (cm(x="1"), cm(x="2")),
        (cm(x="1"), cm(x="1", y="")),  # a new (empty) key
        (cm(x="1"), cm()),
        (cm(x="1"), pb.ConfigMap(metadata=cm().metadata, binary_data={"x": b"1"})),
    ],
    ids=["value", "added key", "emptied", "data to binaryData"],
)
def test_hash_changes_with_content(before: pb.ConfigMap, after: pb.ConfigMap) -> None:
    t = template(env_from=("web-config",))
    assert state(t, before).hash != state(t, after).hash


def test_env_key_reference_counts_only_its_key() -> None:
    t = template(env=(("web-config", "level"),))
    base = state(t, cm(level="debug", other="1"))
    assert state(t, cm(level="debug", other="2")) == base
    assert state(t, cm(level="info", other="1")).hash != base.hash
    missing_key = state(t, cm(other="1"))
    assert missing_key.hash != base.hash and missing_key.sources[0][1] != ABSENT


def test_missing_object_hashes_as_absent_and_its_creation_changes_the_hash() -> None:
    t = template(env_from=("web-config",))
    absent = state(t)
    assert absent.sources == (("ConfigMap/web-config", ABSENT),)
    assert absent.hash
    created = state(t, cm())
    assert created.hash != absent.hash  # even empty: present is not absent


def test_hash_is_keyed_and_covers_kind_and_name() -> None:
    t = template(secret_env=(("db", "pin"),))
    pin = secret(pin=b"1234")
    assert state(t, pin).hash != state(t, pin, key=b"j" * 32).hash
    # nothing derived from the value without the key: no plain digest of it appears
    plain = {hashlib.sha256(b"1234").hexdigest(), hashlib.sha256(b"db1234").hexdigest()}
    h = state(t, pin)
    assert not any(h.hash in p or p.startswith(h.hash) for p in plain)
    same_data_other_kind = template(env=(("db", "pin"),))
    assert state(same_data_other_kind, cm("db", pin="1234")).hash != h.hash


def test_secret_string_data_hashes_as_the_data_it_becomes() -> None:
    t = template(secret_env=(("db", "pw"),))
    written = pb.Secret(metadata=pb.ObjectMeta(name="db", namespace="default"))
    written.string_data["pw"] = "s3cret"
    assert state(t, written) == state(t, secret(pw=b"s3cret"))


def test_sources_name_each_object_and_parse_back() -> None:
    t = template(env=(("a", "k"),), secret_env=(("db", "pw"),))
    s = state(t, cm("a", k="1"))
    text = s.sources_text()
    assert text.startswith("ConfigMap/a=") and text.endswith(",Secret/db=absent")
    assert parse_sources(text) == dict(s.sources)
    assert parse_sources("junk,,ConfigMap/x=1") == {"ConfigMap/x": "1"}


def test_describe_change() -> None:
    before = {"ConfigMap/a": "1", "Secret/db": ABSENT, "ConfigMap/gone": "3", "ConfigMap/same": "4"}
    after = {"ConfigMap/a": "2", "Secret/db": "5", "ConfigMap/new": "6", "ConfigMap/same": "4"}
    assert describe_change(before, after) == "ConfigMap a changed, Secret db created"
    assert describe_change({"Secret/db": "5"}, {"Secret/db": ABSENT}) == "Secret db deleted"
    assert describe_change(after, after) == ""


# ------------------------------------------------------------------ digests


def test_digested_copy_keeps_no_value() -> None:
    s = secret(pw=b"hunter2-very-secret")
    s.string_data["more"] = "another-secret-value"
    c = cm(token="config-value-123")
    c.binary_data["blob"] = b"binary-value-456"
    for obj, values in (
        (s, [b"hunter2-very-secret", b"another-secret-value"]),
        (c, [b"config-value-123", b"binary-value-456"]),
    ):
        d = digested(obj)
        raw = d.SerializeToString()
        assert all(v not in raw for v in values)
        assert d.metadata.annotations[CACHED_AS] == "digests"
        assert content_digests(d) == content_digests(obj)
        assert d.metadata.name == obj.metadata.name


def test_same_content_ignores_metadata() -> None:
    a = cm(x="1")
    b = cm(x="1")
    b.metadata.labels["l"] = "v"
    assert same_content(a, digested(b))
    assert not same_content(a, cm(x="2"))


async def test_shared_informers_cache_secrets_as_digests() -> None:
    objects = FakeObjects()
    objects.add(secret(pw=b"hunter2-very-secret"))
    ctx = fake_context(objects)
    informer = ctx.informers.get("secrets")
    (cached,) = informer.list()
    assert b"hunter2" not in cached.SerializeToString()
    stored = await objects.get("secrets", "db", "default")
    stored.data["pw"] = b"other-secret-value"
    await objects.update(stored)
    now = informer.get("default", "db")
    assert now is not None and b"other-secret" not in now.SerializeToString()
    assert bytes(objects.peek("secrets", "db", "default").data["pw"]) == b"other-secret-value"


# ------------------------------------------------------------------ mapping objects -> workloads


def workload(kind: type[Any], name: str, t: pb.PodTemplateSpec) -> Any:
    obj = kind(metadata=pb.ObjectMeta(name=name, namespace="default"))
    obj.spec.selector.match_labels["app"] = "web"
    obj.spec.template.CopyFrom(t)
    return obj


async def test_config_change_enqueues_exactly_the_workloads_that_use_it() -> None:
    objects = FakeObjects()
    users = [workload(pb.Deployment, f"d{i}", template(env_from=("shared",))) for i in range(50)]
    objects.add(
        *users,
        workload(pb.Deployment, "other", template(env_from=("other",))),
        workload(pb.Deployment, "plain", template()),
        workload(pb.DaemonSet, "ds", template(volume="shared")),
        cm("shared", x="1"),
        cm("other", x="1"),
    )
    other_ns = workload(pb.Deployment, "d0", template(env_from=("shared",)))
    other_ns.metadata.namespace = "elsewhere"
    objects.add(other_ns)
    ctx = fake_context(objects)
    index = ctx.informers.get("deployments")
    assert len(index.by_index(BY_CONFIG_REF, ref_value("ConfigMap", "default", "shared"))) == 50
    queued: list[str] = []
    watch_config(ctx, "Deployment", queued.append)
    ds_queued: list[str] = []
    watch_config(ctx, "DaemonSet", ds_queued.append)
    queued.clear()  # registering on a synced informer replays every object as an add
    ds_queued.clear()

    shared = await objects.get("configmaps", "shared", "default")
    shared.metadata.labels["touched"] = "yes"
    shared = await objects.update(shared)
    assert queued == [] and ds_queued == []  # metadata only: no content change

    shared.data["x"] = "2"
    await objects.update(shared)
    assert sorted(queued) == sorted(f"default/d{i}" for i in range(50))
    assert ds_queued == ["default/ds"]

    queued.clear()
    await objects.delete("configmaps", "other", "default")
    assert queued == ["default/other"]
    queued.clear()
    await objects.create(cm("other", x="1"))
    assert queued == ["default/other"]


async def test_index_follows_template_edits() -> None:
    objects = FakeObjects()
    objects.add(workload(pb.Deployment, "web", template(env_from=("a",))))
    ctx = fake_context(objects)
    deployments = ctx.informers.get("deployments")
    d = await objects.get("deployments", "web", "default")
    d.spec.template.CopyFrom(template(env_from=("b",)))
    await objects.update(d)
    assert deployments.by_index(BY_CONFIG_REF, ref_value("ConfigMap", "default", "a")) == []
    [found] = deployments.by_index(BY_CONFIG_REF, ref_value("ConfigMap", "default", "b"))
    assert found.metadata.name == "web"


async def test_no_hash_from_a_cache_that_has_not_listed_yet() -> None:
    from controllers.base import TemporaryError
    from controllers.config_watch import hasher_for

    objects = FakeObjects()
    objects.add(cm(x="1"))
    ctx = fake_context(objects)
    secrets_cache = ctx.informers.get("secrets")
    secrets_cache.has_synced.clear()  # as if its list had not come back yet
    with pytest.raises(TemporaryError, match="Secret cache"):
        await hasher_for(ctx).state(template(env_from=("web-config",)), "default")
    assert objects.objects("secrets", "mizzen-system") == []  # no key made either
    assert await hasher_for(ctx).state(template(), "default") == ConfigState()
    secrets_cache.has_synced.set()
    assert (await hasher_for(ctx).state(template(env_from=("web-config",)), "default")).hash
