"""The register linearizability checker on small known histories and generated ones."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import pytest

try:
    from linearizability import NOT_READ, Op, Value, check, check_key, prune
except ModuleNotFoundError:  # tests/cluster is on sys.path only once pytest collected it
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
    from linearizability import NOT_READ, Op, Value, check, check_key, prune

INF = math.inf


def w(p: str, v: str | None, t0: float, t1: float, outcome: str = "ok", key: str = "k") -> Op:
    return Op(p, key, "write", t0, t1, outcome, value=v)  # type: ignore[arg-type]


def r(p: str, v: str | None, t0: float, t1: float, outcome: str = "ok", key: str = "k") -> Op:
    return Op(p, key, "read", t0, t1, outcome, value=v)  # type: ignore[arg-type]


def cas(
    p: str,
    expected: str | None,
    new: str,
    t0: float,
    t1: float,
    *,
    succeeded: bool | None = True,
    outcome: str = "ok",
    current: Value | object = NOT_READ,
    key: str = "k",
) -> Op:
    return Op(
        p, key, "cas", t0, t1, outcome,  # type: ignore[arg-type]
        value=new, expected=expected, succeeded=succeeded, current=current,  # type: ignore[arg-type]
    )  # fmt: skip


LINEARIZABLE: dict[str, list[Op]] = {
    "empty read": [r("a", None, 0, 1)],
    "sequential": [w("a", "x", 0, 1), r("b", "x", 2, 3), w("a", "y", 4, 5), r("b", "y", 6, 7)],
    "read during write sees old": [w("a", "x", 0, 1), w("a", "y", 2, 5), r("b", "x", 3, 4)],
    "read during write sees new": [w("a", "x", 0, 1), w("a", "y", 2, 5), r("b", "y", 3, 4)],
    "reads order concurrent writes": [
        w("a", "x", 0, 10), w("b", "y", 0, 10), r("c", "y", 1, 2), r("c", "x", 3, 4),
    ],
    "touching intervals are concurrent": [w("a", "x", 0, 1), r("b", None, 1, 2)],
    "unknown write observed later": [w("a", "x", 0, 1, "unknown"), r("b", "x", 50, 51)],
    "unknown write never observed": [w("a", "x", 0, 1, "unknown"), r("b", None, 50, 51)],
    "unknown write observed then overwritten": [
        w("a", "x", 0, 1, "unknown"), r("b", "x", 5, 6), w("b", "y", 7, 8), r("c", "y", 9, 10),
    ],
    "failed write ignored": [w("a", "x", 0, 1, "fail"), r("b", None, 2, 3)],
    "failed and unknown reads ignored": [r("a", "zzz", 0, 1, "fail"), r("a", "q", 2, 3, "unknown")],
    "cas chain": [
        w("a", "0", 0, 1), cas("a", "0", "1", 2, 3), cas("b", "1", "2", 4, 5), r("c", "2", 6, 7),
    ],
    "concurrent cas one wins": [
        w("a", "0", 0, 1),
        cas("a", "0", "1a", 2, 5),
        cas("b", "0", "1b", 2, 5, succeeded=False, current="1a"),
        r("c", "1a", 6, 7),
    ],
    "cas on absent key": [cas("a", None, "1", 0, 1), r("b", "1", 2, 3)],
    "unknown cas took effect": [w("a", "0", 0, 1), cas("a", "0", "1", 2, 3, outcome="unknown",
                                                       succeeded=None), r("b", "1", 9, 10)],
    "unknown cas did not": [w("a", "0", 0, 1), cas("a", "0", "1", 2, 3, outcome="unknown",
                                                   succeeded=None), r("b", "0", 9, 10)],
}  # fmt: skip

NOT_LINEARIZABLE: dict[str, list[Op]] = {
    "stale read after write completed": [w("a", "x", 0, 1), w("a", "y", 2, 3), r("b", "x", 4, 5)],
    "value never written": [w("a", "x", 0, 1), r("b", "ghost", 2, 3)],
    "new then old (read inversion)": [
        w("a", "x", 0, 1), w("a", "y", 2, 10), r("b", "y", 3, 4), r("c", "x", 5, 6),
    ],
    "failed write observed": [w("a", "x", 0, 1, "fail"), r("b", "x", 2, 3)],
    "unknown write observed then reverted": [
        w("a", "x", 0, 1), w("a", "y", 2, 3, "unknown"), r("b", "y", 5, 6), r("b", "x", 7, 8),
    ],
    "lost update: both cas succeed": [
        w("a", "0", 0, 1), cas("a", "0", "1a", 2, 5), cas("b", "0", "1b", 2, 5), r("c", "1b", 6, 7),
    ],
    "cas fails although the compare held": [
        w("a", "0", 0, 1), cas("b", "0", "1", 2, 3, succeeded=False), r("c", "0", 4, 5),
    ],
    "failed cas reports a value never held": [
        w("a", "0", 0, 1), cas("b", "9", "1", 2, 3, succeeded=False, current="5"),
    ],
    "read before the write was invoked": [r("b", "x", 0, 1), w("a", "x", 2, 3)],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(LINEARIZABLE))
def test_linearizable_histories(name: str) -> None:
    report = check(LINEARIZABLE[name])
    assert report.ok, report.summary()


@pytest.mark.parametrize("name", sorted(NOT_LINEARIZABLE))
def test_not_linearizable_histories(name: str) -> None:
    report = check(NOT_LINEARIZABLE[name])
    assert not report.ok
    (failure,) = report.failures
    assert not failure.inconclusive
    assert "NOT linearizable" in failure.explanation


def test_keys_are_checked_independently() -> None:
    history = [
        w("a", "x", 0, 1, key="good"),
        r("b", "x", 2, 3, key="good"),
        w("a", "x", 0, 1, key="bad"),
        r("b", "y", 2, 3, key="bad"),
    ]
    report = check(history)
    assert [f.key for f in report.failures] == ["bad"]
    assert [res.key for res in report.results] == ["bad", "good"]


def test_explanation_names_the_blocking_op() -> None:
    history = [w("a", "x", 0, 1), w("a", "y", 2, 3), r("reader", "x", 4, 5)]
    report = check(history)
    text = report.summary()
    assert "reader read -> 'x' ok [4.0000, 5.0000]" in text
    assert "leaves the register at 'y'" in text


def test_initial_state_is_used() -> None:
    assert check([r("a", "seed", 0, 1)], initial="seed").ok
    assert not check([r("a", "seed", 0, 1)]).ok


def test_step_budget_is_inconclusive_not_ok() -> None:
    ops = [w(f"p{i}", str(i), 0, 10) for i in range(12)] + [r("z", "ghost", 11, 12)]
    result = check_key("k", ops, max_steps=50)
    assert not result.ok
    assert result.inconclusive
    assert "inconclusive" in result.explanation


def test_ok_cas_needs_its_result() -> None:
    with pytest.raises(ValueError):
        Op("a", "k", "cas", 0, 1, "ok", value="1", expected="0")


def _generated(seed: int, n: int = 120, procs: int = 5, spread: float = 2.0) -> list[Op]:
    """A history produced by a real register: each op takes effect at one instant
    inside its interval; some outcomes are hidden (unknown) or definite failures."""
    rng = random.Random(seed)
    state: str | None = None
    ops: list[Op] = []
    t = 0.0
    for i in range(n):
        t += rng.uniform(0.0, 1.0)
        at = t
        t0, t1 = at - rng.uniform(0, spread), at + rng.uniform(0, spread)
        p = f"p{rng.randrange(procs)}"
        roll = rng.random()
        if roll < 0.4:
            ops.append(r(p, state, t0, t1))
        elif roll < 0.7:
            state = f"v{i}"
            ops.append(w(p, state, t0, t1, rng.choice(["ok", "ok", "ok", "unknown"])))
        else:
            expected = state if rng.random() < 0.6 else f"v{rng.randrange(i + 1)}"
            new = f"v{i}"
            held = expected == state
            if held:
                state = new
            hidden = rng.random() < 0.2
            ops.append(
                cas(p, expected, new, t0, t1, succeeded=None if hidden else held,
                    outcome="unknown" if hidden else "ok", current=NOT_READ if held else state)
            )  # fmt: skip
        if rng.random() < 0.05:
            ops.append(w(p, f"never{i}", t0, t1, "fail"))
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_generated_histories_are_linearizable(seed: int) -> None:
    report = check(_generated(seed))
    assert report.ok, f"seed {seed}: {report.summary()}"


@pytest.mark.parametrize("seed", range(20))
def test_a_corrupted_read_is_caught(seed: int) -> None:
    ops = _generated(seed)
    reads = [i for i, op in enumerate(ops) if op.kind == "read" and op.outcome == "ok"]
    victim = ops[random.Random(seed).choice(reads)]
    ops[ops.index(victim)] = r(victim.process, "corrupt", victim.invoke, victim.complete)
    report = check(ops)
    assert not report.ok
    assert not report.failures[0].inconclusive


def test_prune_drops_only_unmentioned_unknown_ops() -> None:
    seen = w("a", "seen", 0, 1, "unknown")
    unseen = w("a", "unseen", 0, 1, "unknown")
    unseen_cas = cas("a", "x", "unseen2", 0, 1, outcome="unknown", succeeded=None)
    ops = [seen, unseen, unseen_cas, r("b", "seen", 2, 3), w("c", "x", 0, 1)]
    assert prune(ops) == [seen, ops[3], ops[4]]


def test_prune_keeps_all_when_a_failed_cas_did_not_read() -> None:
    ops = [w("a", "u", 0, 1, "unknown"), cas("b", "x", "y", 2, 3, succeeded=False)]
    assert prune(ops) == ops


def test_pruning_never_changes_the_verdict() -> None:
    """On small histories (full search feasible), with and without pruning agree,
    for intact histories and for every single-read corruption of them."""
    verdicts: list[bool] = []
    for seed in range(25):
        ops = [op for op in _generated(seed, n=14, procs=3) if op.outcome != "fail"]
        written = sorted({op.value for op in ops if op.kind != "read" and op.value})
        variants = [ops]
        for i, op in enumerate(ops):
            if op.kind == "read" and op.outcome == "ok":
                for value in written[:4]:
                    changed = r(op.process, value, op.invoke, op.complete)
                    variants.append([*ops[:i], changed, *ops[i + 1 :]])
        for variant in variants:
            full = check_key("k", variant)
            pruned = check_key("k", prune(variant))
            assert not full.inconclusive and not pruned.inconclusive
            assert full.ok == pruned.ok, f"seed {seed}: {full} vs {pruned}"
            verdicts.append(full.ok)
    assert verdicts.count(False) > 50 and verdicts.count(True) > 50
