"""Restart back-off for crashed processes (kubelet's CrashLoopBackOff), pure.

Delays start at ``initial`` and double on every exit up to ``cap``. A process
that ran for at least ``reset_after`` seconds before it exited is considered
to have been healthy: its next delay starts over at ``initial``. Time is
passed in, never read, so tests step it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RestartBackoff:
    initial: float = 1.0
    cap: float = 60.0
    reset_after: float = 120.0
    _next: float = 0.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.cap < self.initial:
            raise ValueError("backoff needs 0 < initial <= cap")
        self._next = self.initial

    def delay_after_exit(self, started_at: float, finished_at: float) -> float:
        """How long to wait before restarting a process that ran [started_at, finished_at]."""
        if finished_at - started_at >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.initial

    @property
    def next_delay(self) -> float:
        """The delay the next exit would get (without a reset)."""
        return self._next
