"""`mizzen wait`: --for parsing, what meets it, and the targets' shapes."""

from __future__ import annotations

import pytest

from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.main import main
from mizzen.cli.wait_cmd import (
    ForCondition,
    ForDelete,
    ForJsonPath,
    met,
    parse_for,
    parse_targets,
)
from protos import objects_pb2 as pb

PHASE = "{.status.phase}"


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("delete", ForDelete()),
        ("condition=Available", ForCondition("Available", "True")),
        ("condition=Ready=False", ForCondition("Ready", "False")),
        ("jsonpath={.status.phase}=Running", ForJsonPath(PHASE, ("status", "phase"), "Running")),
        ("jsonpath='{.status.phase}'=Done", ForJsonPath(PHASE, ("status", "phase"), "Done")),
        ("jsonpath={.status.conditions[1].type}",
         ForJsonPath("{.status.conditions[1].type}", ("status", "conditions", 1, "type"))),
        ("jsonpath=.spec.replicas=3", ForJsonPath(".spec.replicas", ("spec", "replicas"), "3")),
    ],
)  # fmt: skip
def test_parse_for(text: str, want: object) -> None:
    assert parse_for(text) == want


@pytest.mark.parametrize(
    "text",
    ["", "ready", "condition=", "condition=Ready=", "jsonpath={status.phase}=x",
     "jsonpath={.status.phase", "jsonpath={.a[?(@.x)]}=y", "jsonpath={.a}x"],
)  # fmt: skip
def test_bad_for_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_for(text)


def _deployment() -> pb.Deployment:
    d = pb.Deployment(metadata=pb.ObjectMeta(name="web", namespace="default"))
    d.spec.replicas = 3
    d.status.conditions.add(type="Available", status="True")
    d.status.conditions.add(type="Progressing", status="False", reason="ProgressDeadlineExceeded")
    return d


def test_met() -> None:
    d = _deployment()
    assert met(d, ForCondition("available"))
    assert met(d, ForCondition("Progressing", "false"))
    assert not met(d, ForCondition("Progressing"))
    assert not met(d, ForCondition("Complete"))
    assert not met(None, ForCondition("Available"))
    assert met(None, ForDelete()) and not met(d, ForDelete())
    assert met(d, parse_for("jsonpath={.spec.replicas}=3"))
    assert met(d, parse_for("jsonpath={.status.conditions[1].reason}=ProgressDeadlineExceeded"))
    assert met(d, parse_for("jsonpath={.spec.replicas}"))
    assert not met(d, parse_for("jsonpath={.status.conditions[5].type}"))
    assert not met(d, parse_for("jsonpath={.spec.paused}=true"))


def test_targets() -> None:
    [t] = parse_targets(["deploy/web", "deployment/api"], "", False)
    assert (t.info.kind, t.names) == ("Deployment", ("web", "api"))
    [t] = parse_targets(["pods"], "app=web", False)
    assert (t.info.kind, t.names, t.selector) == ("Pod", (), "app=web")
    [t] = parse_targets(["job", "a", "b"], "", False)
    assert t.names == ("a", "b")
    assert len(parse_targets(["job/a", "pod/b"], "", False)) == 2
    for words, selector in ((["pods"], ""), (["pod/a"], "app=x"), (["job/a", "b"], ""), ([], "")):
        with pytest.raises(UsageError):
            parse_targets(words, selector, False)
    with pytest.raises(UsageError):
        parse_targets(["pods"], "a in (", False)
    with pytest.raises(CommandError, match="unknown kind"):
        parse_targets(["widgets/x"], "", False)


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wait", "--for=sometime", "job/x", "--endpoints", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mizzen: --for=sometime: expected delete")
