"""`mizzen label/annotate/edit`'s pure parts: the words, the store's key rules, overwrites."""

from __future__ import annotations

import pytest

from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.label_cmd import apply_changes, parse_changes, strip_comments, with_errors
from protos import objects_pb2 as pb


def test_words_split_into_objects_sets_and_removals() -> None:
    objects, changes = parse_changes(["pod/a", "pod/b", "x=1", "mizzen.io/y=", "z-"], "labels")
    assert objects == ["pod/a", "pod/b"]
    assert changes.set == {"x": "1", "mizzen.io/y": ""}
    assert changes.remove == ("z",)


@pytest.mark.parametrize(
    ("words", "field", "message"),
    [
        (["pod/a"], "labels", "give at least one label"),
        (["pod/a", "x=1", "x-"], "labels", "can not both modify and remove label 'x'"),
        (["pod/a", "-bad=1"], "labels", "labels key '-bad'"),
        (["pod/a", "x=not ok"], "labels", "label value 'not ok'"),
        (["pod/a", "x=1", "pod/b"], "labels", "objects must come before"),
    ],
)
def test_bad_words_are_one_line_usage_errors(words: list[str], field: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_changes(words, field)


def test_annotation_values_are_free_text() -> None:
    _, changes = parse_changes(["pod/a", "note=any text: at all"], "annotations")
    assert changes.set == {"note": "any text: at all"}


def test_an_existing_other_value_needs_overwrite() -> None:
    pod = pb.Pod(metadata=pb.ObjectMeta(name="a", labels={"x": "1"}))
    _, same = parse_changes(["pod/a", "x=1"], "labels")
    assert apply_changes(pod, same, overwrite=False) is False
    _, other = parse_changes(["pod/a", "x=2"], "labels")
    with pytest.raises(CommandError, match=r"^'x' already has a value \(1\), and --overwrite"):
        apply_changes(pod, other, overwrite=False)
    assert apply_changes(pod, other, overwrite=True) is True
    assert pod.metadata.labels["x"] == "2"


def test_error_comments_are_stripped_again() -> None:
    body = "kind: Pod\nmetadata:\n  name: a  # trailing comment kept\n"
    assert strip_comments(with_errors(body, ["error: one\ntwo"])) == body
