"""Label and field selectors: parse kubectl-style strings, match objects.

Label selector strings follow kubectl ``-l``: comma-separated requirements,
all of which must hold::

    app=web, tier!=db, env in (a,b), env notin (c), release, !legacy

``!=`` and ``notin`` also match objects without the label (as in
Kubernetes). A LabelSelector proto converts to the same matcher; an empty
selector matches everything.

Field selectors support ``=``, ``==`` and ``!=`` on a small set of fields per
kind (metadata.name, metadata.namespace for all; spec.nodeName and
status.phase for pods; spec.unschedulable for nodes; involvedObject.kind,
.name, .namespace, .uid, reason, type and source for events).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from mizzen.api import names
from mizzen.echo import echo_repr
from protos import objects_pb2 as pb


class SelectorError(ValueError):
    """A selector string or LabelSelector that is not well-formed."""


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True)
class Requirement:
    """One condition on one label key."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case Operator.EQUALS:
                return present and value == self.values[0]
            case Operator.NOT_EQUALS:
                return not present or value != self.values[0]
            case Operator.IN:
                return present and value in self.values
            case Operator.NOT_IN:
                return not present or value not in self.values
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present

    def __str__(self) -> str:
        match self.operator:
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"


@dataclass(frozen=True)
class LabelMatcher:
    """A conjunction of requirements; no requirements matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|=|!)|(?P<punct>[(),])|(?P<word>[^\s=!(),]+))",
)


def _tokens(text: str) -> list[str]:
    out = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover - every non-space character starts a token
            raise SelectorError(f"unexpected character at {pos} in {echo_repr(text)}")
        out.append(match["op"] or match["punct"] or match["word"])
        pos = match.end()
    return out


def _check_key(key: str) -> None:
    problems = names.qualified_name(key)
    if problems:
        raise SelectorError(f"invalid label key {echo_repr(key)}: {'; '.join(problems)}")


def _check_value(value: str) -> None:
    problems = names.label_value(value)
    if problems:
        raise SelectorError(f"invalid label value {echo_repr(value)}: {'; '.join(problems)}")


def parse_label_selector(text: str) -> LabelMatcher:
    """Parse a kubectl ``-l`` selector; raises SelectorError naming the problem."""
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"unexpected end of selector {echo_repr(text)}")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        token = take()
        if token == "!":
            key = take()
            _check_key(key)
            requirements.append(Requirement(key, Operator.DOES_NOT_EXIST))
        elif token in ("=", "==", "!=", "(", ")", ","):
            raise SelectorError(
                f"expected a label key, found {echo_repr(token)} in {echo_repr(text)}"
            )
        else:
            key = token
            _check_key(key)
            nxt = tokens[i] if i < len(tokens) else ","
            if nxt == ",":
                requirements.append(Requirement(key, Operator.EXISTS))
            elif nxt in ("=", "==", "!="):
                take()
                value = ""
                if i < len(tokens) and tokens[i] not in (",", "(", ")", "=", "==", "!=", "!"):
                    value = take()
                _check_value(value)
                op = Operator.NOT_EQUALS if nxt == "!=" else Operator.EQUALS
                requirements.append(Requirement(key, op, (value,)))
            elif nxt in ("in", "notin"):
                take()
                if take() != "(":
                    raise SelectorError(f"expected '(' after {echo_repr(nxt)} in {echo_repr(text)}")
                values: list[str] = []
                while True:
                    word = take()
                    if word == ")" and not values:
                        break
                    if word in (",", ")", "(", "=", "==", "!=", "!"):
                        raise SelectorError(
                            f"expected a value, found {echo_repr(word)} in {echo_repr(text)}"
                        )
                    _check_value(word)
                    values.append(word)
                    sep = take()
                    if sep == ")":
                        break
                    if sep != ",":
                        raise SelectorError(
                            f"expected ',' or ')', found {echo_repr(sep)} in {echo_repr(text)}"
                        )
                if not values:
                    raise SelectorError(
                        f"{echo_repr(nxt)} needs at least one value in {echo_repr(text)}"
                    )
                op = Operator.IN if nxt == "in" else Operator.NOT_IN
                requirements.append(Requirement(key, op, tuple(values)))
            else:
                raise SelectorError(
                    f"unexpected {echo_repr(nxt)} after key {echo_repr(key)} in {echo_repr(text)}"
                )
        if i < len(tokens):
            if take() != ",":
                raise SelectorError(f"expected ',' between requirements in {echo_repr(text)}")
            if i >= len(tokens):
                raise SelectorError(f"trailing ',' in {echo_repr(text)}")
    return LabelMatcher(tuple(requirements))


_PROTO_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def from_label_selector(selector: pb.LabelSelector) -> LabelMatcher:
    """The matcher for a LabelSelector proto; raises SelectorError if malformed.

    validation.py reports the same problems with field paths; this is for
    callers holding an already-validated object.
    """
    requirements = [
        Requirement(key, Operator.EQUALS, (value,))
        for key, value in sorted(selector.match_labels.items())
    ]
    for expr in selector.match_expressions:
        op = _PROTO_OPERATORS.get(expr.operator)
        if op is None:
            raise SelectorError(f"unknown operator {echo_repr(expr.operator)}")
        if op in (Operator.IN, Operator.NOT_IN) and not expr.values:
            raise SelectorError(f"operator {expr.operator} needs values")
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and expr.values:
            raise SelectorError(f"operator {expr.operator} takes no values")
        requirements.append(Requirement(expr.key, op, tuple(expr.values)))
    return LabelMatcher(tuple(requirements))


# ---------------------------------------------------------------- field selectors

# Objects are typed protobuf messages of different classes; the getters know the shape.
FieldGetter = Callable[[Any], str]

_COMMON_FIELDS: dict[str, FieldGetter] = {
    "metadata.name": lambda o: o.metadata.name,
    "metadata.namespace": lambda o: o.metadata.namespace,
}
_KIND_FIELDS: dict[str, dict[str, FieldGetter]] = {
    "Pod": {
        "spec.nodeName": lambda o: o.spec.node_name,
        "status.phase": lambda o: o.status.phase,
    },
    "Node": {
        "spec.unschedulable": lambda o: str(o.spec.unschedulable).lower(),
    },
    # kubectl's names for an Event's fields (ours live under spec).
    "Event": {
        "involvedObject.kind": lambda o: o.spec.involved_object.kind,
        "involvedObject.name": lambda o: o.spec.involved_object.name,
        "involvedObject.namespace": lambda o: o.spec.involved_object.namespace,
        "involvedObject.uid": lambda o: o.spec.involved_object.uid,
        "reason": lambda o: o.spec.reason,
        "type": lambda o: o.spec.type,
        "source": lambda o: o.spec.source.component,
    },
}


def supported_fields(kind: str) -> list[str]:
    """Field names a field selector may use for this kind."""
    return sorted({**_COMMON_FIELDS, **_KIND_FIELDS.get(kind, {})})


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    negate: bool
    value: str

    def __str__(self) -> str:
        return f"{self.field}{'!=' if self.negate else '='}{self.value}"


@dataclass(frozen=True)
class FieldMatcher:
    """A conjunction of field requirements for one kind."""

    kind: str
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Message) -> bool:
        getters = {**_COMMON_FIELDS, **_KIND_FIELDS.get(self.kind, {})}
        for req in self.requirements:
            equal = getters[req.field](obj) == req.value
            if equal == req.negate:
                return False
        return True

    def value_of(self, field: str) -> str | None:
        """The value an equality requirement pins field to (an index hint), if any."""
        for req in self.requirements:
            if req.field == field and not req.negate:
                return req.value
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


_FIELD_TERM = re.compile(r"\s*(?P<field>[A-Za-z.]+)\s*(?P<op>==|!=|=)\s*(?P<value>[^,]*?)\s*")


def parse_field_selector(text: str, kind: str) -> FieldMatcher:
    """Parse ``metadata.name=x,status.phase!=Running`` for kind; empty matches all."""
    fields = supported_fields(kind)
    requirements = []
    if text.strip():
        for term in text.split(","):
            match = _FIELD_TERM.fullmatch(term)
            if match is None:
                raise SelectorError(
                    f"invalid field selector term {echo_repr(term)}: want field=value"
                )
            field = match["field"]
            if field not in fields:
                raise SelectorError(
                    f"field {echo_repr(field)} is not supported for "
                    f"{kind}; use one of {', '.join(fields)}"
                )
            requirements.append(FieldRequirement(field, match["op"] == "!=", match["value"]))
    return FieldMatcher(kind, tuple(requirements))
