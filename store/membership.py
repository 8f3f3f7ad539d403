"""Store membership: the replicated member records drive pysyncobj's Raft member set.

The member set is replicated state (``StateMachine.members``): name, id, Raft
address and client URLs. The first boot's ``--initial-cluster`` seeds it;
``MemberAdd``/``MemberRemove`` change the records through the log. Raft's own
configuration follows the records, level-triggered: on the leader a small
reconciler compares the records with pysyncobj's member set and makes one
``addNodeToCluster``/``removeNodeFromCluster`` change at a time, waiting until
that change is committed before the next (pysyncobj documents "one change at a
time" but does not enforce it). A leader whose own record was removed hands
leadership over (pysyncobj refuses to remove the leader itself); the next leader
then removes it from Raft. A leader that dies halfway leaves the records in
place, and the next leader finishes the change.

Decisions that look at pysyncobj's state (its member set, who is connected,
whether the leader applied its no-op entry) run inside pysyncobj's tick thread,
through one tick hook, so they never race with it.

One file because the member records' rules (names, ids, peer URLs, quorum) and
the level-triggered reconciler that makes pysyncobj follow them are one
protocol: each Raft change waits on the state the previous one left.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from pysyncobj import FAIL_REASON

from .errors import Code, StoreError
from .state_machine import PEER_URL_EXISTS, Member, StateMachine

log = structlog.get_logger("store.membership")

T = TypeVar("T")
NAME_METADATA = "mizzen-member-name"
RECONCILE_INTERVAL = 0.2
CHANGE_GIVE_UP = 30.0  # a change whose callback never came (leadership lost) is forgotten
REMOVE_GRACE = 0.6  # seconds of heartbeats a removed member gets before Raft drops it
REMOVED = "etcdserver: the member has been permanently removed from the cluster"
IN_PROGRESS = (
    "mizzen: another membership change is in progress (one change at a time); "
    "retry when `member list` shows it done"
)
_FORBIDDEN_NAME_CHARS = set("=,@/ \t\n")


@dataclass(frozen=True)
class RaftView:
    """pysyncobj's membership as this member sees it (read in the tick thread)."""

    is_leader: bool
    self_addr: str
    others: frozenset[str]
    connected: frozenset[str]
    settled: bool  # leader: its no-op of this term applied, nothing of an older term pending

    @property
    def addrs(self) -> frozenset[str]:
        return self.others | {self.self_addr}


def next_raft_change(
    view: RaftView,
    want: set[str],
    change_since: float | None,
    remove_seen: dict[str, float],
    now: float,
) -> tuple[str, str] | None:
    """The leader's next step of Raft's member set toward the records' addresses (want):
    ("transfer", self) when this member's own record is gone, ("add", addr),
    ("remove", addr), or None (not the settled leader, a change still in flight for
    less than CHANGE_GIVE_UP, not seeded, nothing to do, or a connected member to
    remove still within REMOVE_GRACE of when it was first seen: it first gets a few
    heartbeats carrying the commit of its record's removal, so it learns that it was
    removed). Records in remove_seen when a removal was first considered."""
    if not view.is_leader or not view.settled:
        return None
    if change_since is not None and now - change_since < CHANGE_GIVE_UP:
        return None  # the previous change is not committed yet: one at a time
    if not want:
        return None  # not seeded yet
    if view.self_addr not in want:
        return ("transfer", view.self_addr)
    add = sorted(want - view.addrs)
    if add:
        return ("add", add[0])
    remove = sorted(view.addrs - want)
    if remove:
        first = remove_seen.setdefault(remove[0], now)
        if remove[0] in view.connected and now - first < REMOVE_GRACE:
            return None
        return ("remove", remove[0])
    return None


def parse_peer_url(url: str) -> tuple[str | None, str]:
    """``(name or None, host:port)`` of ``http://[NAME@]host:port`` or ``host:port``."""
    rest = url.strip()
    for scheme in ("http://", "https://"):
        if rest.startswith(scheme):
            rest = rest[len(scheme) :]
    rest = rest.rstrip("/")
    name, at, addr = rest.rpartition("@")
    host, colon, port = addr.rpartition(":")
    if not colon or not host or not port.isdigit() or "/" in addr:
        raise StoreError(
            Code.INVALID_ARGUMENT,
            f"mizzen: peerURLs: expected [http://][NAME@]host:port, got {url!r}",
        )
    return (name if at else None), addr


def check_name(name: str) -> None:
    if not name or _FORBIDDEN_NAME_CHARS & set(name) or len(name) > 63:
        raise StoreError(
            Code.INVALID_ARGUMENT,
            f"mizzen: name: {name!r} is not a valid member name "
            "(1-63 characters, none of '=,@/' or spaces)",
        )


def member_id(name: str) -> int:
    """Stable uint64 member id derived from the member name (non-zero)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") or 1


def _fresh_id(taken: set[int]) -> int:
    """A random non-zero member id not in use (etcd picks a random-looking one too)."""
    while True:
        mid = secrets.randbits(64)
        if mid and mid not in taken:
            return mid


def quorum(n: int) -> int:
    return n // 2 + 1


class MembershipConfig(Protocol):
    """The member's flags membership reads (``store.node.NodeConfig``)."""

    @property
    def name(self) -> str: ...

    @property
    def initial_cluster(self) -> dict[str, str]: ...

    @property
    def raft_addr(self) -> str: ...

    @property
    def request_timeout(self) -> float: ...


class MembershipHost(Protocol):
    """What membership uses of its member (``store.node.StoreNode``): the replicated
    state through ``read`` and ``propose``, and pysyncobj itself (``syncobj``) for the
    Raft-level changes, only from its tick thread (``add_raft_tick_hook``)."""

    syncobj: Any

    @property
    def cfg(self) -> MembershipConfig: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def raft_term(self) -> int: ...

    def leader_name(self) -> str | None: ...

    def read(self, fn: Callable[[StateMachine], T]) -> T: ...

    async def propose(self, cmd: tuple[Any, ...], timeout: float | None = None) -> Any: ...

    async def barrier(self, timeout: float | None = None) -> None: ...

    def add_raft_tick_hook(self, hook: Callable[[], None]) -> None: ...


class Membership:
    """Member records, the Raft reconciler, and the MemberAdd/Remove/MoveLeader operations."""

    def __init__(self, node: MembershipHost, clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.clock = clock
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._change_lock = asyncio.Lock()
        self._remove_seen: dict[str, float] = {}  # peer -> when first seen to remove
        self._change_since: float | None = None  # a Raft change issued, not yet answered
        self.removed = False  # this member was in the member set and has been removed

    # ------------------------------------------------------------- plumbing

    def start(self) -> None:
        self.node.add_raft_tick_hook(self._on_tick)

    def _on_tick(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                job()
            except Exception:  # never break pysyncobj's tick
                log.exception("membership_tick_job_failed")

    async def _in_tick(self, fn: Callable[[], T], timeout: float = 5.0) -> T:
        """Run fn in pysyncobj's tick thread; its result (or exception) here."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(setter: Callable[[Any], None], value: Any) -> None:
            if not fut.done():
                setter(value)

        def job() -> None:
            try:
                result = fn()
            except Exception as exc:
                loop.call_soon_threadsafe(settle, fut.set_exception, exc)
            else:
                loop.call_soon_threadsafe(settle, fut.set_result, result)

        self._jobs.put(job)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise StoreError(
                Code.UNAVAILABLE, f"mizzen: the Raft loop did not answer within {timeout}s"
            ) from None

    def _view(self) -> RaftView:
        """In the tick thread."""
        so = self.node.syncobj
        others = so.otherNodes
        applied = int(so.raftLastApplied)
        noop = getattr(so, "_SyncObj__noopIDx", None)
        leader = bool(so._isLeader())
        return RaftView(
            is_leader=leader,
            self_addr=str(so.selfNode.address),
            others=frozenset(str(n.address) for n in others),
            connected=frozenset(str(n.address) for n in others if so.isNodeConnected(n)),
            settled=leader and noop is not None and applied >= int(noop),
        )

    # ---------------------------------------------------------------- reads

    def members(self) -> list[Member]:
        """The replicated member set; before it is seeded, this member's --initial-cluster."""
        recorded = self.node.read(lambda sm: list(sm.members.values()))
        if recorded:
            return sorted(recorded, key=lambda m: m.name)
        return [
            Member(n, member_id(n), a) for n, a in sorted(self.node.cfg.initial_cluster.items())
        ]

    def name_of(self, addr: str) -> str | None:
        return next((m.name for m in self.members() if m.peer_addr == addr), None)

    def id_of(self, addr: str) -> int | None:
        return next((m.id for m in self.members() if m.peer_addr == addr), None)

    def own_record(self) -> Member | None:
        """This member's record: by name, or the unnamed one added for its Raft address."""
        name, addr = self.node.cfg.name, self.node.cfg.raft_addr
        return self.node.read(lambda sm: sm.members.get(name) or sm.members.get("@" + addr))

    def seed_command(self, cluster_id: int) -> tuple[Any, ...]:
        seed = tuple((n, member_id(n), a) for n, a in sorted(self.node.cfg.initial_cluster.items()))
        return ("member_seed", cluster_id, seed)

    # ------------------------------------------------------------ background

    async def seed(self, cluster_id: int) -> None:
        """First boot: record --initial-cluster as the member set (a no-op once recorded)."""
        while not self.node.read(lambda sm: bool(sm.members)):
            try:
                await self.node.propose(self.seed_command(cluster_id))
            except StoreError:
                await asyncio.sleep(0.5)

    async def reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_INTERVAL)
            try:
                self._note_if_removed()
                if self.node.is_leader:
                    await self.reconcile_once()
            except (TimeoutError, StoreError) as err:  # retried on the next pass
                log.info("membership_reconcile_retry", reason=str(err))
            except Exception:
                log.exception("membership_reconcile_failed")

    def _note_if_removed(self) -> None:
        """Notice that the member set (once seeded) lacks this member: it then refuses requests.

        Also true for a moment on a new member that loaded a leader snapshot
        older than its own MemberAdd; it clears when the log catches up.
        """
        names = self.node.read(lambda sm: set(sm.members))
        if not names or self.node.cfg.name in names or "@" + self.node.cfg.raft_addr in names:
            self.removed = False
        elif not self.removed:
            self.removed = True
            log.warning(
                "member_removed_from_cluster",
                name=self.node.cfg.name,
                detail="this member no longer takes part in Raft; stop it and delete its data",
            )

    async def reconcile_once(self) -> str | None:
        """On the leader: one step of Raft's member set toward the records; what was done."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[Any, Any]] = loop.create_future()

        def settle(res: Any, err: Any) -> None:
            if not done.done():
                done.set_result((res, err))

        def callback(res: Any, err: Any) -> None:
            self._change_since = None  # in the tick thread, like decide()
            loop.call_soon_threadsafe(settle, res, err)

        def decide() -> str | None:
            view = self._view()
            want = self.node.read(lambda sm: {m.peer_addr for m in sm.members.values()})
            now = self.clock()
            step = next_raft_change(view, want, self._change_since, self._remove_seen, now)
            if step is None:
                return None
            what, addr = step
            so = self.node.syncobj
            if what == "transfer":
                so.transferLeadership(None, callback)
                return f"transfer leadership away from removed {addr}"
            self._change_since = now
            if what == "add":
                so.addNodeToCluster(addr, callback)
            else:
                self._remove_seen.pop(addr, None)
                so.removeNodeFromCluster(addr, callback)
            return f"{what} {addr}"

        action = await self._in_tick(decide)
        if action is None:
            return None
        async with asyncio.timeout(self.node.cfg.request_timeout * 2):
            _, err = await done
        ok = err == FAIL_REASON.SUCCESS
        log.info("raft_membership_change", action=action, ok=ok, reason=err)
        return action if ok else None

    # ----------------------------------------------------------- operations

    def _refuse_if_changing(self) -> None:
        if self._change_lock.locked():
            raise StoreError(Code.FAILED_PRECONDITION, IN_PROGRESS)

    async def _checked_view(self) -> tuple[RaftView, list[Member]]:
        """This member's Raft view and the records, refusing while a change is in flight."""
        await self.node.barrier()
        view = await self._in_tick(self._view)
        members = self.members()
        if {m.peer_addr for m in members} != set(view.addrs):
            raise StoreError(Code.FAILED_PRECONDITION, IN_PROGRESS)
        return view, members

    async def add(self, name: str | None, peer_addr: str) -> tuple[Member, list[Member]]:
        """Add a voting member. Without a name (etcd's request has none) it is recorded
        unnamed with a random id, listed ``unstarted`` until it starts with
        ``--initial-cluster-state existing`` and publishes its name (``member_attrs``)."""
        if name is not None:
            check_name(name)
        self._refuse_if_changing()
        async with self._change_lock:
            view, members = await self._checked_view()
            for m in members:
                if name is not None and m.name == name:
                    raise StoreError(
                        Code.ALREADY_EXISTS, f"mizzen: member name {name!r} already exists"
                    )
                if m.peer_addr == peer_addr:
                    raise StoreError(Code.FAILED_PRECONDITION, PEER_URL_EXISTS)
            taken = {m.id for m in members}
            mid = member_id(name) if name is not None else _fresh_id(taken)
            active = 1 + len(view.connected)
            if active < quorum(len(members) + 1):
                raise StoreError(
                    Code.UNAVAILABLE,
                    f"etcdserver: unhealthy cluster (only {active} of {len(members)} members "
                    f"are reachable; {quorum(len(members) + 1)} are needed after the add)",
                )
            expected = tuple(m.key for m in members)
            added = await self.node.propose(("member_add", name or "", mid, peer_addr, expected))
            await self._wait_raft(lambda v: peer_addr in v.addrs, f"Raft to add {peer_addr}")
            return added, self.members()

    async def update(self, mid: int, peer_addr: str) -> list[Member]:
        """etcd's MemberUpdate: a new Raft address for a member (Raft then adds the new
        address and removes the old one; a started member must be restarted with
        ``--listen-raft`` at the new address)."""
        self._refuse_if_changing()
        async with self._change_lock:
            _, members = await self._checked_view()
            target = next((m for m in members if m.id == mid), None)
            if target is None:
                raise StoreError(Code.NOT_FOUND, "etcdserver: member not found")
            if target.peer_addr == peer_addr:
                return members
            if any(m.peer_addr == peer_addr for m in members):
                raise StoreError(Code.FAILED_PRECONDITION, PEER_URL_EXISTS)
            expected = tuple(m.key for m in members)
            await self.node.propose(("member_update", mid, peer_addr, expected))
            old = target.peer_addr
            await self._wait_raft(
                lambda v: peer_addr in v.addrs and old not in v.addrs,
                f"Raft to move member {mid:x} from {old} to {peer_addr}",
            )
            return self.members()

    async def remove(self, mid: int) -> tuple[Member, list[Member]]:
        self._refuse_if_changing()
        async with self._change_lock:
            view, members = await self._checked_view()
            target = next((m for m in members if m.id == mid), None)
            if target is None:
                raise StoreError(Code.NOT_FOUND, "etcdserver: member not found")
            if len(members) == 1:
                raise StoreError(Code.FAILED_PRECONDITION, "mizzen: cannot remove the only member")
            active = len(({view.self_addr} | view.connected) - {target.peer_addr})
            if active < quorum(len(members) - 1):
                raise StoreError(
                    Code.UNAVAILABLE,
                    f"etcdserver: unhealthy cluster (removing {target.name} would leave "
                    f"{active} reachable members, {quorum(len(members) - 1)} are needed)",
                )
            expected = tuple(m.key for m in members)
            removed = await self.node.propose(("member_remove", mid, expected))
            if target.peer_addr != view.self_addr:
                await self._wait_raft(
                    lambda v: target.peer_addr not in v.addrs, f"Raft to remove {target.name}"
                )
            return removed, self.members()

    async def _wait_raft(self, done: Callable[[RaftView], bool], what: str) -> None:
        timeout = max(10.0, self.node.cfg.request_timeout * 2)
        deadline = self.clock() + timeout
        while self.clock() < deadline:
            if done(await self._in_tick(self._view)):
                return
            await asyncio.sleep(0.05)
        raise StoreError(
            Code.DEADLINE_EXCEEDED,
            f"mizzen: recorded, but timed out after {timeout:.0f}s waiting for {what}; "
            "the leader keeps trying (check the member list)",
        )

    async def move_leader(self, target_id: int) -> None:
        """Hand leadership to target (Raft's TimeoutNow); returns once it leads."""
        if not self.node.is_leader:
            raise StoreError(Code.FAILED_PRECONDITION, "etcdserver: not leader")
        target = next((m for m in self.members() if m.id == target_id), None)
        if target is None:
            raise StoreError(Code.NOT_FOUND, "etcdserver: member not found")
        if target.name == self.node.cfg.name:
            return
        deadline = self.clock() + max(5.0, self.node.cfg.request_timeout)
        sent_in_term: int | None = None
        while self.clock() < deadline:
            leader = self.node.leader_name()
            if leader == target.name:
                return
            if self.node.is_leader and sent_in_term != self.node.raft_term:
                # (again) after an election the target lost, e.g. because an entry
                # appended after the transfer left its log behind the others'
                err = await self._in_tick(lambda: self._transfer(target.peer_addr))
                if err == FAIL_REASON.SUCCESS:
                    sent_in_term = self.node.raft_term
            elif not self.node.is_leader and leader is not None and sent_in_term is not None:
                raise StoreError(
                    Code.ABORTED,
                    f"mizzen: leader transfer to {target.name} failed: {leader} was elected; retry",
                )
            await asyncio.sleep(0.05)
        raise StoreError(
            Code.DEADLINE_EXCEEDED,
            "etcdserver: request timed out, leader transfer took too long",
        )

    def _transfer(self, addr: str) -> Any:
        """In the tick thread: pysyncobj's transferLeadership; its FAIL_REASON.

        Denied while the target has not yet replicated the leader's whole log;
        the caller retries.
        """
        result: list[Any] = []
        self.node.syncobj.transferLeadership(addr, lambda _res, err: result.append(err))
        return result[0] if result else FAIL_REASON.REQUEST_DENIED
