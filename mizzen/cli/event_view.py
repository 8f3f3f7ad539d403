"""Events as the CLI shows them: which object they are about, when, and table rows — pure.

Used by `mizzen describe` (the Events: section) and `mizzen events`. An
event's time is its last timestamp, else its first, else its creation time;
time is passed in, so tests need no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mizzen.cli.tables import Row, age


def _seconds(ts: Any) -> float:
    return float(ts.seconds) + ts.nanos / 1e9


def last_seen(event: Any) -> float:
    """When the event last happened (0.0 when it carries no time at all)."""
    spec = event.spec
    if spec.HasField("last_timestamp"):
        return _seconds(spec.last_timestamp)
    if spec.HasField("first_timestamp"):
        return _seconds(spec.first_timestamp)
    if event.metadata.HasField("creation_timestamp"):
        return _seconds(event.metadata.creation_timestamp)
    return 0.0


def first_seen(event: Any) -> float:
    if event.spec.HasField("first_timestamp"):
        return _seconds(event.spec.first_timestamp)
    return last_seen(event)


def sort_events(events: Iterable[Any]) -> list[Any]:
    """Oldest first, newest last (the end of the output is what happened most recently)."""
    return sorted(events, key=lambda e: (last_seen(e), e.metadata.name))


def is_about(event: Any, kind: str, name: str, namespace: str, uid: str = "") -> bool:
    """Whether event's involved object is kind/name in namespace (and uid, when both know it).

    An involved object without a namespace counts as the event's own namespace;
    for a cluster-scoped object pass namespace "" to match in any namespace.
    """
    ref = event.spec.involved_object
    if ref.kind != kind or ref.name != name:
        return False
    if namespace and (ref.namespace or event.metadata.namespace) != namespace:
        return False
    return not (uid and ref.uid and ref.uid != uid)


def object_ref(event: Any) -> str:
    """The OBJECT column: ``pod/web-1`` (the kind in lower case, like kubectl)."""
    ref = event.spec.involved_object
    return f"{ref.kind.lower()}/{ref.name}"


def age_with_count(event: Any, now: float) -> str:
    """``10s``, or ``10s (x3 over 5m)`` for an event that repeated."""
    seen = age(last_seen(event), now)
    if event.spec.count > 1:
        return f"{seen} (x{event.spec.count} over {age(first_seen(event), now)})"
    return seen


def one_line(text: str) -> str:
    return " ".join(text.split())


def events_table(events: Sequence[Any], *, now: float, with_namespace: bool = False) -> list[Row]:
    """`mizzen events` rows: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (NAMESPACE first with -A)."""
    first = ["NAMESPACE"] if with_namespace else []
    rows = [[*first, "LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
    for ev in sort_events(events):
        ns = [ev.metadata.namespace] if with_namespace else []
        spec = ev.spec
        rows.append(
            [
                *ns,
                age_with_count(ev, now),
                spec.type or "Normal",
                spec.reason,
                object_ref(ev),
                one_line(spec.message),
            ]
        )
    return rows


def describe_rows(events: Sequence[Any], *, now: float) -> list[Row]:
    """The rows under a describe's ``Events:``: Type, Reason, Age, From, Message."""
    rows = [
        ["Type", "Reason", "Age", "From", "Message"],
        ["----", "------", "----", "----", "-------"],
    ]
    for ev in sort_events(events):
        spec = ev.spec
        source = spec.source.component or "<unknown>"
        if spec.source.host:
            source = f"{source}, {spec.source.host}"
        rows.append(
            [
                spec.type or "Normal",
                spec.reason,
                age_with_count(ev, now),
                source,
                one_line(spec.message),
            ]
        )
    return rows
