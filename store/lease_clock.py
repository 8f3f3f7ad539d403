"""When this member's leases expire: deadlines on an injected clock, no I/O.

Lease TTLs are replicated; their deadlines are not (etcd's lessor does the
same): each member counts them on its own monotonic clock from the moment it
applied the grant or the keep-alive, and a new leader gives every lease a full
TTL from the moment it leads (``restart_all``), so a leader change never
shortens a lease. Only the leader acts on ``due``: it proposes each expiry once
(``expiring`` until the proposal settles), and the expiry, applied on every
member, removes the deadline everywhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping


class LeaseClock:
    """Deadlines (clock seconds) of the leases this member knows."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadlines: dict[int, float] = {}
        self.expiring: set[int] = set()

    def extend(self, lease_id: int, ttl: int) -> None:
        """A grant or keep-alive applied: the lease lives ttl seconds from now."""
        self.deadlines[lease_id] = self.clock() + ttl

    def forget(self, lease_id: int) -> None:
        """Revoked or expired (applied), or no longer in the state."""
        self.deadlines.pop(lease_id, None)
        self.expiring.discard(lease_id)

    def restart_all(self, ttls: Mapping[int, int]) -> None:
        """Every lease of the state gets its full TTL from now (leadership, a snapshot)."""
        now = self.clock()
        self.deadlines = {lid: now + ttl for lid, ttl in ttls.items()}
        self.expiring.clear()

    def remaining(self, lease_id: int) -> int:
        """Whole seconds left (rounded up, as etcd's TimeToLive); -1 for an unknown lease."""
        deadline = self.deadlines.get(lease_id)
        if deadline is None:
            return -1
        return max(0, math.ceil(deadline - self.clock()))

    def due(self) -> Iterable[int]:
        """Leases past their deadline not already being expired; each is marked expiring
        (the caller proposes its expiry and calls ``settled`` when that is done)."""
        now = self.clock()
        for lid, deadline in list(self.deadlines.items()):
            if deadline <= now and lid not in self.expiring:
                self.expiring.add(lid)
                yield lid

    def settled(self, lease_id: int, *, gone: bool = False) -> None:
        """The expiry proposal ended (gone: the lease is not in the state at all)."""
        self.expiring.discard(lease_id)
        if gone:
            self.deadlines.pop(lease_id, None)
