"""Leader election on a store lease, and the fence token that guards the leader's writes.

Campaign: grant a lease (TTL ``ttl``), then one Txn: if ``create_revision(key)
== 0`` put ``key = identity`` attached to the lease. Whoever's put succeeded
leads; its fence token is ``(key, create_revision of that put)``. Every write
of the leader's controllers carries the token and the store refuses it once
the key is gone or re-created, so a deposed leader (paused, partitioned)
cannot have a write accepted even before it notices.

Holding: the lease is renewed by ``KeepAlive`` (every ttl/3 s). Leadership is
lost — ``hold`` returns with the reason — when a renewal fails for the TTL or
the server says the lease is gone, when a watch on the key sees it deleted or
re-created, or when the periodic check (every ``check_interval`` s, a
linearizable read) finds it so. ``resign`` revokes the lease: the key goes at
once and a standby takes over without waiting for the TTL.

Standbys watch the key and campaign again as soon as it is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from mizzen.client.errors import StoreClientError
from mizzen.client.lease import KeepAlive
from mizzen.client.ops import Compare, Op
from mizzen.client.records import EventType, RangeResult
from mizzen.client.store_client import StoreClient

log = structlog.get_logger(__name__)

DEFAULT_KEY = "/mizzen/leader/controllers"


@dataclass(frozen=True)
class Leadership:
    """A won election: the fence token is (key, create_revision)."""

    key: bytes
    identity: str
    lease_id: int
    create_revision: int


async def current_leader(client: StoreClient, key: str = DEFAULT_KEY) -> tuple[str, int] | None:
    """(identity, revision it became leader at) of the current leader, None if there is none."""
    kv = await client.get(key)
    if kv is None:
        return None
    return kv.value.decode(errors="replace"), kv.create_revision


class LeaderElector:
    def __init__(
        self,
        client: StoreClient,
        identity: str,
        *,
        key: str = DEFAULT_KEY,
        ttl: float = 3.0,
        check_interval: float = 1.0,
        retry_interval: float = 0.5,
    ) -> None:
        self._client = client
        self.identity = identity
        self.key = key.encode()
        self.ttl = max(1, math.ceil(ttl))
        self.check_interval = check_interval
        self.retry_interval = retry_interval

    async def campaign(self) -> Leadership:
        """Wait until this process leads; retries store errors forever (cancel to stop)."""
        while True:
            try:
                won = await self._try_once()
            except StoreClientError as err:
                log.warning("campaign_failed", error=str(err), retry_in=self.retry_interval)
                await asyncio.sleep(self.retry_interval)
                continue
            if isinstance(won, Leadership):
                log.info(
                    "leader_elected",
                    identity=self.identity,
                    key=self.key.decode(),
                    create_revision=won.create_revision,
                    lease=f"{won.lease_id:x}",
                )
                return won
            await self._wait_vacant(won)

    async def _try_once(self) -> Leadership | int:
        """Our Leadership, or the revision at which someone else held the key."""
        lease_id, _ = await self._client.lease_grant(self.ttl)
        try:
            ok, results, revision = await self._client.txn(
                [Compare.create_revision(self.key) == 0],
                [Op.put(self.key, self.identity.encode(), lease=lease_id)],
                [Op.get(self.key)],
            )
        except BaseException:
            await self._revoke_quietly(lease_id)
            raise
        if ok:
            return Leadership(self.key, self.identity, lease_id, revision)
        await self._revoke_quietly(lease_id)
        found = results[0] if results else None
        if isinstance(found, RangeResult) and found.kvs:
            log.debug("campaign_lost", leader=found.kvs[0].value.decode(errors="replace"))
        return revision

    async def _wait_vacant(self, revision: int) -> None:
        """Return once the key is deleted after revision (or after a bounded wait: try again)."""
        try:
            async with asyncio.timeout(max(self.ttl * 2, 2)):
                async with self._client.watch(self.key, start_revision=revision + 1) as watcher:
                    async for batch in watcher:
                        if any(ev.type is EventType.DELETE for ev in batch.events):
                            return
        except TimeoutError:
            return  # campaign again at once: a delete must not wait out a pause
        except StoreClientError:
            await asyncio.sleep(self.retry_interval)

    async def hold(self, leadership: Leadership) -> str:
        """Block while leadership holds; return why it was lost."""
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def lose(reason: str) -> None:
            if not lost.done():
                lost.set_result(reason)

        ka = self._client.keep_alive(leadership.lease_id)
        try:
            await ka.start()
        except StoreClientError as err:
            return f"lease lost at start: {err}"
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._watch_lease(ka, lose)),
                    tg.create_task(self._watch_key(leadership, lose)),
                    tg.create_task(self._check_key(leadership, lose)),
                ]
                reason = await lost
                for task in tasks:
                    task.cancel()
        finally:
            await ka.aclose()
        log.warning("leadership_lost", identity=self.identity, reason=reason)
        return reason

    async def _watch_lease(self, ka: KeepAlive, lose: Callable[[str], None]) -> None:
        await ka.lost.wait()
        lose(f"lease: {ka.lost_reason}")

    async def _watch_key(self, leadership: Leadership, lose: Callable[[str], None]) -> None:
        while True:
            try:
                async with self._client.watch(
                    self.key, start_revision=leadership.create_revision
                ) as watcher:
                    async for batch in watcher:
                        for ev in batch.events:
                            if ev.type is EventType.DELETE:
                                lose("election key deleted")
                                return
                            if ev.kv.create_revision != leadership.create_revision:
                                lose("election key re-created")
                                return
            except StoreClientError as err:
                log.warning("leader_watch_failed", error=str(err))
                await asyncio.sleep(self.retry_interval)

    async def _check_key(self, leadership: Leadership, lose: Callable[[str], None]) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                kv = await self._client.get(self.key)
            except StoreClientError as err:
                log.warning("leader_check_failed", error=str(err))
                continue
            if kv is None or kv.create_revision != leadership.create_revision:
                lose("election key gone or re-created")
                return

    async def resign(self, leadership: Leadership) -> None:
        """Give leadership up now (revoke the lease: the key is deleted at once)."""
        await self._revoke_quietly(leadership.lease_id)
        log.info("leader_resigned", identity=self.identity)

    async def _revoke_quietly(self, lease_id: int) -> None:
        with contextlib.suppress(StoreClientError):
            await self._client.lease_revoke(lease_id)
