"""Label selector strings and protos, field selectors: parsing and matching."""

from __future__ import annotations

import pytest

from mizzen.api import selectors
from mizzen.api.selectors import Operator, Requirement, SelectorError
from protos import objects_pb2 as pb


@pytest.mark.parametrize(
    ("text", "requirements"),
    [
        ("", []),
        ("app=web", [Requirement("app", Operator.EQUALS, ("web",))]),
        ("app==web", [Requirement("app", Operator.EQUALS, ("web",))]),
        ("app=", [Requirement("app", Operator.EQUALS, ("",))]),
        ("tier!=db", [Requirement("tier", Operator.NOT_EQUALS, ("db",))]),
        ("env in (a,b)", [Requirement("env", Operator.IN, ("a", "b"))]),
        ("env in ( a , b )", [Requirement("env", Operator.IN, ("a", "b"))]),
        ("env notin (c)", [Requirement("env", Operator.NOT_IN, ("c",))]),
        ("release", [Requirement("release", Operator.EXISTS)]),
        ("!legacy", [Requirement("legacy", Operator.DOES_NOT_EXIST)]),
        ("example.com/team=core", [Requirement("example.com/team", Operator.EQUALS, ("core",))]),
        (
            "app=web,tier!=db,env in (a,b),!legacy,release",
            [
                Requirement("app", Operator.EQUALS, ("web",)),
                Requirement("tier", Operator.NOT_EQUALS, ("db",)),
                Requirement("env", Operator.IN, ("a", "b")),
                Requirement("legacy", Operator.DOES_NOT_EXIST),
                Requirement("release", Operator.EXISTS),
            ],
        ),
        (
            " app = web , release ",
            [
                Requirement("app", Operator.EQUALS, ("web",)),
                Requirement("release", Operator.EXISTS),
            ],
        ),
    ],
)
def test_parse_label_selector(text: str, requirements: list[Requirement]) -> None:
    assert list(selectors.parse_label_selector(text).requirements) == requirements


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (",", "expected a label key"),
        ("a,", "trailing ','"),
        ("=web", "expected a label key"),
        ("a b", "unexpected 'b' after key 'a'"),
        ("x in ()", "needs at least one value"),
        ("x in (a", "unexpected end"),
        ("x in a", "expected '\\(' after 'in'"),
        ("x in (a b)", "expected ',' or '\\)'"),
        ("x in (a,)", "expected a value"),
        ("x=y=z", "expected ',' between requirements"),
        ("!", "unexpected end"),
        ("bad key!=x", "unexpected 'key'"),
        ("-app=web", "invalid label key '-app'"),
        ("app=-web", "invalid label value '-web'"),
        ("a/b/c=x", "invalid label key"),
        ("app=" + "x" * 64, "invalid label value"),
    ],
)
def test_parse_label_selector_rejects(text: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        selectors.parse_label_selector(text)


SELECTOR = "app=web,tier!=db,env in (a,b),!legacy,release"


@pytest.mark.parametrize(
    ("labels", "matches"),
    [
        ({"app": "web", "env": "a", "release": "1"}, True),
        ({"app": "web", "env": "b", "release": "", "tier": "front"}, True),
        ({"app": "api", "env": "a", "release": "1"}, False),
        ({"app": "web", "env": "a", "release": "1", "tier": "db"}, False),
        ({"app": "web", "env": "c", "release": "1"}, False),
        ({"app": "web", "release": "1"}, False),
        ({"app": "web", "env": "a", "release": "1", "legacy": "yes"}, False),
        ({"app": "web", "env": "a"}, False),
    ],
)
def test_label_selector_matches(labels: dict[str, str], matches: bool) -> None:
    assert selectors.parse_label_selector(SELECTOR).matches(labels) is matches


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("tier!=db", {}, True),
        ("env notin (a)", {}, True),
        ("env notin (a)", {"env": "a"}, False),
        ("env in (a)", {}, False),
        ("", {"anything": "x"}, True),
    ],
)
def test_absent_labels(text: str, labels: dict[str, str], matches: bool) -> None:
    assert selectors.parse_label_selector(text).matches(labels) is matches


def test_str_round_trips() -> None:
    parsed = selectors.parse_label_selector(SELECTOR)
    assert str(parsed) == SELECTOR
    assert selectors.parse_label_selector(str(parsed)) == parsed


def _proto(match_labels: dict[str, str], *exprs: tuple[str, str, list[str]]) -> pb.LabelSelector:
    selector = pb.LabelSelector(match_labels=match_labels)
    for key, op, values in exprs:
        selector.match_expressions.add(key=key, operator=op, values=values)
    return selector


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        (_proto({}), {"a": "1"}, True),
        (_proto({"app": "web"}), {"app": "web", "x": "y"}, True),
        (_proto({"app": "web"}), {"app": "api"}, False),
        (_proto({}, ("env", "In", ["a", "b"])), {"env": "b"}, True),
        (_proto({}, ("env", "NotIn", ["a"])), {"env": "a"}, False),
        (_proto({}, ("env", "Exists", [])), {"env": ""}, True),
        (_proto({}, ("env", "DoesNotExist", [])), {"env": ""}, False),
        (_proto({"app": "web"}, ("env", "In", ["a"])), {"app": "web", "env": "c"}, False),
    ],
)
def test_from_label_selector(
    selector: pb.LabelSelector, labels: dict[str, str], matches: bool
) -> None:
    assert selectors.from_label_selector(selector).matches(labels) is matches


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (_proto({}, ("env", "Equals", ["a"])), "unknown operator"),
        (_proto({}, ("env", "In", [])), "needs values"),
        (_proto({}, ("env", "Exists", ["a"])), "takes no values"),
    ],
)
def test_from_label_selector_rejects(selector: pb.LabelSelector, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        selectors.from_label_selector(selector)


def _pod(
    name: str = "web-1", namespace: str = "prod", node: str = "n1", phase: str = "Running"
) -> pb.Pod:
    pod = pb.Pod()
    pod.metadata.name = name
    pod.metadata.namespace = namespace
    pod.spec.node_name = node
    pod.status.phase = phase
    return pod


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("", True),
        ("metadata.name=web-1", True),
        ("metadata.name==web-1", True),
        ("metadata.name=web-2", False),
        ("metadata.namespace=prod", True),
        ("metadata.namespace!=prod", False),
        ("spec.nodeName=n1", True),
        ("spec.nodeName=", False),
        ("spec.nodeName!=n2", True),
        ("status.phase=Running", True),
        ("status.phase!=Running", False),
        ("spec.nodeName=n1, status.phase=Pending", False),
        ("spec.nodeName=n1,status.phase!=Failed,metadata.namespace=prod", True),
    ],
)
def test_field_selector_on_pods(text: str, matches: bool) -> None:
    assert selectors.parse_field_selector(text, "Pod").matches(_pod()) is matches


def test_field_selector_unscheduled_pods() -> None:
    matcher = selectors.parse_field_selector("spec.nodeName=", "Pod")
    assert matcher.matches(_pod(node=""))
    assert matcher.value_of("spec.nodeName") == ""
    assert (
        selectors.parse_field_selector("spec.nodeName!=x", "Pod").value_of("spec.nodeName") is None
    )


def test_field_selector_on_events() -> None:
    event = pb.Event(metadata=pb.ObjectMeta(name="e1", namespace="default"))
    event.spec.involved_object.kind = "Pod"
    event.spec.involved_object.name = "web-1"
    event.spec.reason = "BackOff"
    event.spec.type = "Warning"
    event.spec.source.component = "agent"

    def sel(text: str) -> bool:
        return selectors.parse_field_selector(text, "Event").matches(event)

    assert sel("involvedObject.kind=Pod,involvedObject.name=web-1")
    assert not sel("involvedObject.name=web-2")
    assert sel("reason=BackOff,type!=Normal,source=agent")
    with pytest.raises(selectors.SelectorError, match="not supported for Pod"):
        selectors.parse_field_selector("reason=BackOff", "Pod")


def test_field_selector_on_nodes() -> None:
    node = pb.Node()
    node.metadata.name = "n1"
    node.spec.unschedulable = True
    assert selectors.parse_field_selector("spec.unschedulable=true", "Node").matches(node)
    assert not selectors.parse_field_selector("metadata.name=n2", "Node").matches(node)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("status.phase=Running", "Deployment", "not supported for Deployment"),
        ("spec.nodeName=n1", "Node", "not supported for Node"),
        ("metadata.labels=x", "Pod", "not supported for Pod"),
        ("metadata.name", "Pod", "want field=value"),
        ("metadata.name in (a)", "Pod", "want field=value"),
        ("metadata.name=a,", "Pod", "want field=value"),
    ],
)
def test_field_selector_rejects(text: str, kind: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        selectors.parse_field_selector(text, kind)


def test_supported_fields() -> None:
    assert selectors.supported_fields("Pod") == [
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "status.phase",
    ]
    assert selectors.supported_fields("Job") == ["metadata.name", "metadata.namespace"]
