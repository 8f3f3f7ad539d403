"""A linearizability checker for histories of per-key registers (read, write, cas).

The model: each key is an independent register whose state is a value or None
(absent). Operations:

* ``read``  — ok: the register held ``value`` at some instant in [invoke, complete];
* ``write`` — sets the register to ``value``;
* ``cas``   — if the register holds ``expected``, set it to ``value``;
  ok+succeeded: the compare held; ok+failed: it did not (and, when the failure
  branch read the register, it held ``current``).

Outcomes: ``ok`` (took effect inside its interval), ``fail`` (definitely did not
take effect: dropped), ``unknown`` (ambiguous: it may have taken effect at any
instant after its invocation, or never). An unknown write or cas gets an
infinite completion time, which covers both cases: taking effect "never" is the
same as taking effect after everything else (Knossos / Porcupine do the same).
Reads that failed or are unknown say nothing and are dropped.

Keys are checked separately (P-compositionality: a history of independent
objects is linearizable iff each object's sub-history is). Each key is searched
with the Wing-Gong algorithm with Lowe's just-in-time linearization and
memoization of (set of linearized ops, register state), as in Porcupine; the
cache is what makes the search practical — any configuration reached twice is
pruned. ``max_steps`` bounds the work per key; beyond it the result is
*inconclusive* (reported as such, never as linearizable).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["read", "write", "cas"]
Outcome = Literal["ok", "fail", "unknown"]


class NotRead(enum.Enum):
    """The failure branch of a cas did not read the register."""

    TOKEN = "not read"


NOT_READ = NotRead.TOKEN
Value = str | None


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation with its real-time interval (``complete`` = inf if unknown)."""

    process: str
    key: str
    kind: Kind
    invoke: float
    complete: float
    outcome: Outcome
    value: Value = None
    expected: Value = None
    succeeded: bool | None = None
    current: Value | NotRead = NOT_READ

    def __post_init__(self) -> None:
        if self.kind == "cas" and self.outcome == "ok" and self.succeeded is None:
            raise ValueError("an ok cas must say whether its compare succeeded")
        if self.outcome == "ok" and self.complete < self.invoke:
            raise ValueError(f"op completes before it is invoked: {self}")

    def describe(self) -> str:
        end = "…" if math.isinf(self.complete) else f"{self.complete:.4f}"
        span = f"[{self.invoke:.4f}, {end}]"
        if self.kind == "read":
            what = f"read -> {self.value!r}"
        elif self.kind == "write":
            what = f"write {self.value!r}"
        else:
            what = f"cas {self.expected!r} -> {self.value!r}"
            if self.outcome == "ok" and self.succeeded:
                what += " (succeeded)"
            elif self.outcome == "ok":
                seen = "" if self.current is NOT_READ else f", current {self.current!r}"
                what += f" (compare failed{seen})"
        return f"{self.process} {what} {self.outcome} {span}"


def step(state: Value, op: Op) -> tuple[bool, Value]:
    """(op is possible in state, state after it) for the register model."""
    if op.kind == "read":
        return state == op.value, state
    if op.kind == "write":
        return True, op.value
    if op.outcome == "unknown":
        return True, op.value if state == op.expected else state
    if op.succeeded:
        return state == op.expected, op.value
    if state == op.expected:
        return False, state
    return op.current is NOT_READ or op.current == state, state


@dataclass(frozen=True)
class KeyResult:
    key: str
    ok: bool
    inconclusive: bool
    ops: int
    steps: int
    explanation: str = ""


@dataclass(frozen=True)
class Report:
    results: list[KeyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.results if not r.ok]

    def summary(self) -> str:
        if self.ok:
            n = sum(r.ops for r in self.results)
            return f"linearizable: {len(self.results)} keys, {n} ops"
        return "\n\n".join(r.explanation for r in self.failures)


def relevant(op: Op) -> bool:
    """Ops that constrain the history: every ok op, and unknown writes / cas."""
    if op.outcome == "ok":
        return True
    return op.outcome == "unknown" and op.kind != "read"


def prune(ops: Sequence[Op]) -> list[Op]:
    """Drop unknown writes / cas whose value no other op ever mentions.

    Sound and complete for one key: if such an op u took effect, the ops
    linearized while the register held u's value can only be unknown cas that
    did nothing (a read, an ok cas or a cas that read ``current`` would mention
    u's value), so those move to the end and u is dropped; conversely u can
    always go last. Not applied when an ok cas failed without reading the
    register: such a cas is possible in u's state without mentioning it.
    Without this, every pending unknown op doubles the search space.
    """
    if any(op.kind == "cas" and op.outcome == "ok" and not op.succeeded
           and op.current is NOT_READ for op in ops):  # fmt: skip
        return list(ops)
    mentioned: set[Value] = set()
    for op in ops:
        if op.kind == "read":
            mentioned.add(op.value)
        elif op.kind == "cas":
            mentioned.add(op.expected)
            if op.current is not NOT_READ:
                mentioned.add(op.current)
    return [op for op in ops if op.outcome != "unknown" or op.value in mentioned]


def check(history: Iterable[Op], *, initial: Value = None, max_steps: int = 2_000_000) -> Report:
    """Check every key's sub-history; keys start in ``initial`` (None: absent)."""
    by_key: dict[str, list[Op]] = {}
    for op in history:
        if relevant(op):
            by_key.setdefault(op.key, []).append(op)
    return Report(
        [check_key(k, prune(ops), initial, max_steps) for k, ops in sorted(by_key.items())]
    )


_SENTINEL = Op("", "", "read", 0.0, 0.0, "fail")


class _Entry:
    __slots__ = ("call", "index", "match", "next", "op", "prev", "time")

    def __init__(self, op: Op, index: int, call: bool, time: float) -> None:
        self.op = op
        self.index = index
        self.call = call
        self.time = time
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


def _entries(ops: Sequence[Op]) -> _Entry:
    """A doubly linked list (with a sentinel head) of call and return events in time order.

    At equal times calls sort before returns, so touching intervals count as
    concurrent (the permissive reading: timestamps are taken outside the RPC).
    """
    events: list[tuple[float, int, int, _Entry]] = []
    for i, op in enumerate(ops):
        complete = math.inf if op.outcome == "unknown" else op.complete
        call = _Entry(op, i, True, op.invoke)
        ret = _Entry(op, i, False, complete)
        call.match = ret
        events.append((op.invoke, 0, i, call))
        events.append((complete, 1, i, ret))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(_SENTINEL, -1, False, -math.inf)
    prev = head
    for _, _, _, entry in events:
        prev.next = entry
        entry.prev = prev
        prev = entry
    return head


def _lift(entry: _Entry) -> None:
    assert entry.prev is not None and entry.match is not None
    entry.prev.next = entry.next
    if entry.next is not None:
        entry.next.prev = entry.prev
    match = entry.match
    assert match.prev is not None
    match.prev.next = match.next
    if match.next is not None:
        match.next.prev = match.prev


def _unlift(entry: _Entry) -> None:
    match = entry.match
    assert match is not None and match.prev is not None and entry.prev is not None
    match.prev.next = match
    if match.next is not None:
        match.next.prev = match
    entry.prev.next = entry
    if entry.next is not None:
        entry.next.prev = entry


def check_key(
    key: str, ops: Sequence[Op], initial: Value = None, max_steps: int = 2_000_000
) -> KeyResult:
    """Wing-Gong search with memoization over one key's ops."""
    ops = list(ops)
    head = _entries(ops)
    state: Value = initial
    linearized = 0
    cache: set[tuple[int, Value]] = set()
    stack: list[tuple[_Entry, Value]] = []
    best: list[Op] = []
    best_state: Value = initial
    best_blocker: Op | None = None
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps > max_steps:
            return KeyResult(
                key, False, True, len(ops), steps,
                f"key {key!r}: inconclusive after {max_steps} search steps ({len(ops)} ops)",
            )  # fmt: skip
        assert entry is not None
        if entry.call:
            possible, new_state = step(state, entry.op)
            if possible:
                marked = linearized | (1 << entry.index)
                if (marked, new_state) not in cache:
                    cache.add((marked, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, marked
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
            continue
        if len(stack) >= len(best):
            best = [e.op for e, _ in stack]
            best_state = state
            best_blocker = entry.op
        if not stack:
            return KeyResult(
                key, False, False, len(ops), steps,
                _explain(key, ops, best, best_state, best_blocker),
            )  # fmt: skip
        top, state = stack.pop()
        linearized &= ~(1 << top.index)
        _unlift(top)
        entry = top.next
    return KeyResult(key, True, False, len(ops), steps)


def _explain(
    key: str, ops: Sequence[Op], prefix: list[Op], state: Value, blocker: Op | None
) -> str:
    """The longest linearization found, the state it leaves, and the op that cannot follow.

    Also lists the ops concurrent with the blocking op, i.e. the ones that could
    have been ordered around it: together with the prefix they are the whole
    reason no linearization exists.
    """
    lines = [
        f"key {key!r}: NOT linearizable ({len(ops)} ops).",
        f"Longest linearization found: {len(prefix)} ops; last ones:",
    ]
    lines += [f"    {op.describe()}" for op in prefix[-8:]]
    lines.append(f"  ... leaves the register at {state!r}.")
    if blocker is not None:
        lines.append("No remaining op can be linearized before this one returns:")
        lines.append(f"    {blocker.describe()}")
        placed = set(map(id, prefix))
        concurrent = [
            op
            for op in ops
            if id(op) not in placed
            and op is not blocker
            and op.invoke <= blocker.complete
            and (op.outcome == "unknown" or op.complete >= blocker.invoke)
        ]
        lines.append(f"  Candidates (not yet linearized, concurrent with it): {len(concurrent)}")
        lines += [f"    {op.describe()}" for op in sorted(concurrent, key=lambda o: o.invoke)[:12]]
    return "\n".join(lines)
