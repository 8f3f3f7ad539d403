"""Config rollouts, the controller side: the per-term hash key and the watches.

``ConfigHasher`` computes ``controllers.confighash.config_state`` from the
shared caches with the cluster's key (read or created once per leadership
term); ``watch_config`` enqueues the workloads whose ConfigMaps or Secrets
changed. The hashing itself is pure and lives in ``controllers.confighash``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

import structlog

from controllers.base import ControllerContext, PermanentError, TemporaryError
from controllers.confighash import (
    BY_CONFIG_REF,
    KEY_BYTES,
    KEY_FIELD,
    KEY_SECRET_NAME,
    KEY_SECRET_NAMESPACE,
    MIN_KEY_BYTES,
    ConfigState,
    config_state,
    counted_refs,
    ref_value,
    same_content,
)
from mizzen.api.config_refs import CONFIG_MAP, SECRET
from mizzen.client.errors import AlreadyExistsError, NotFoundError
from protos import objects_pb2 as pb

log = structlog.get_logger(__name__)


class ConfigHasher:
    """Config states from the shared caches, with the cluster's hash key (one per term).

    The key is read from (or, the first time, created as) the Secret
    ``mizzen-system/config-hash-key`` once per leadership term and shared by
    the Deployment and DaemonSet controllers (``hasher_for``). Deleting that
    Secret makes a new key at the next term: every workload with counted
    references then rolls once.
    """

    def __init__(self, ctx: ControllerContext) -> None:
        self._ctx = ctx
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def key(self) -> bytes:
        if self._key is not None:
            return self._key
        async with self._lock:
            if self._key is None:
                self._key = await self._load_key()
            return self._key

    async def _load_key(self) -> bytes:
        client = self._ctx.client
        try:
            secret = await client.get("secrets", KEY_SECRET_NAME, KEY_SECRET_NAMESPACE)
        except NotFoundError:
            secret = pb.Secret()
            secret.metadata.name = KEY_SECRET_NAME
            secret.metadata.namespace = KEY_SECRET_NAMESPACE
            secret.metadata.annotations["mizzen.io/description"] = (
                "HMAC key of mizzen.io/config-hash; replacing or deleting it rolls every "
                "Deployment and DaemonSet that uses ConfigMaps or Secrets once"
            )
            secret.type = "Opaque"
            secret.data[KEY_FIELD] = secrets.token_bytes(KEY_BYTES)
            try:
                secret = await client.create(secret)
                log.info(
                    "config_hash_key_created", secret=f"{KEY_SECRET_NAMESPACE}/{KEY_SECRET_NAME}"
                )
            except AlreadyExistsError:
                secret = await client.get("secrets", KEY_SECRET_NAME, KEY_SECRET_NAMESPACE)
        key = bytes(secret.data.get(KEY_FIELD, b""))
        if len(key) < MIN_KEY_BYTES:
            raise PermanentError(
                f"secret {KEY_SECRET_NAMESPACE}/{KEY_SECRET_NAME}: data.{KEY_FIELD} must hold "
                f"at least {MIN_KEY_BYTES} bytes (delete the Secret to have a new key made)",
                reason="ConfigHashKeyInvalid",
            )
        return key

    def _lookup(self, kind: str, namespace: str, name: str) -> Any:
        return self._ctx.informers.get(kind).get(namespace, name)

    async def state(self, template: pb.PodTemplateSpec, namespace: str) -> ConfigState:
        """The config state of template in namespace (the key is read on first use).

        Raises TemporaryError while the ConfigMap or Secret cache has not listed
        yet: a hash over an empty cache would roll everything out.
        """
        if not counted_refs(template):
            return ConfigState()
        for kind in (CONFIG_MAP, SECRET):
            if not self._ctx.informers.get(kind).has_synced.is_set():
                raise TemporaryError(f"waiting for the {kind} cache to sync", delay=0.5)
        return config_state(template, namespace, self._lookup, await self.key())


DEFAULT_DEBOUNCE = 0.2
"""Seconds a workload waits after a config change before it is reconciled (option
``config.debounce``): edits of several objects in a row (``apply -f dir/``) make one
rollout, not one per object."""


def debounce_of(ctx: ControllerContext) -> float:
    return float(ctx.config.options.get("config.debounce", DEFAULT_DEBOUNCE))


def watch_config(
    ctx: ControllerContext, workload_kind: str, enqueue: Callable[[str], None]
) -> None:
    """Call enqueue(key) for every workload of workload_kind ("Deployment", "DaemonSet")
    whose template refers to a ConfigMap or Secret that was created, deleted, or whose
    data changed (metadata-only updates are ignored)."""
    workloads = ctx.informers.get(workload_kind)

    def touched(kind: str, obj: Any) -> None:
        meta = obj.metadata
        for w in workloads.by_index(BY_CONFIG_REF, ref_value(kind, meta.namespace, meta.name)):
            enqueue(f"{w.metadata.namespace}/{w.metadata.name}")

    for kind in (CONFIG_MAP, SECRET):
        informer = ctx.informers.get(kind)

        def on_change(obj: Any, kind: str = kind) -> None:
            touched(kind, obj)

        def on_update(old: Any, new: Any, kind: str = kind) -> None:
            if not same_content(old, new):
                touched(kind, new)

        informer.on_add(on_change)
        informer.on_update(on_update)
        informer.on_delete(on_change)


def hasher_for(ctx: ControllerContext) -> ConfigHasher:
    """The term's shared ConfigHasher (kept in ``ctx.extra``)."""
    hasher = ctx.extra.get("config_hasher")
    if not isinstance(hasher, ConfigHasher):
        hasher = ctx.extra["config_hasher"] = ConfigHasher(ctx)
    return hasher
