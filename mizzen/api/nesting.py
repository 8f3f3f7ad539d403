"""A nesting limit for the YAML and JSON that users hand us (manifests, the CLI config).

Both parsers recurse once per level, so a document nested a few hundred deep
(``[[[[...]]]]``) would end in a RecursionError traceback. No manifest needs
more than a few dozen levels, so MAX_DEPTH levels of lists and mappings are
allowed (the document's own mapping counts as one) and anything deeper is a
parse error naming the line and column of the first level too many:

- YAML: ``LimitedSafeLoader`` is PyYAML's SafeLoader (no Python tags) whose
  composer counts levels; yaml_message() formats any YAMLError as one line.
  A scalar that matches a type but is not one (``2024-13-45``, ``!!int abc``)
  is a YAMLError at its line too: PyYAML raised a bare ValueError (a traceback).
- JSON: check_json_depth() scans the text (strings skipped) before json.loads.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import MappingStartEvent, SequenceStartEvent
from yaml.nodes import Node, ScalarNode

from mizzen.echo import echo

MAX_DEPTH = 100
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


class LimitedSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses a list or mapping nested deeper than MAX_DEPTH."""

    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        depth = self._depth
        if depth >= MAX_DEPTH and self.check_event(SequenceStartEvent, MappingStartEvent):
            raise ComposerError(None, None, TOO_DEEP, self.peek_event().start_mark)
        self._depth = depth + 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as exc:
            kind = str(node.tag).rsplit(":", 1)[-1]
            shown = f' "{echo(node.value)}"' if isinstance(node, ScalarNode) else ""
            raise ConstructorError(
                None, None, f"invalid {kind}{shown}: {exc}", node.start_mark
            ) from None


def yaml_message(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: ``invalid YAML at line L, column C: problem``."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML: {exc}"


class JsonTooDeepError(ValueError):
    """JSON nested deeper than MAX_DEPTH; lineno and colno (1-based) of the level too many."""

    def __init__(self, lineno: int, colno: int) -> None:
        super().__init__(f"line {lineno}, column {colno}: {TOO_DEEP}")
        self.lineno = lineno
        self.colno = colno


_STRING = r'"(?:[^"\\]|\\.)*"'
_STRINGS = re.compile(_STRING, re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_TOKENS = re.compile(_STRING + r"|[\[\]{}]", re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def check_json_depth(text: str) -> None:
    """Raise JsonTooDeepError if text's brackets nest deeper than MAX_DEPTH.

    Run before json.loads, whose C parser recurses per level. The common case
    (a few MB of dumped objects) stays in C: strings and everything but
    brackets are removed by regular expressions, the running depth is an
    itertools.accumulate. Only a document that is too deep is walked token by
    token to find where.
    """
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    if not brackets or max(itertools.accumulate(map(_STEP.__getitem__, brackets))) <= MAX_DEPTH:
        return
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in _STEP:
            depth += _STEP[token]
            if depth > MAX_DEPTH:
                pos = match.start()
                raise JsonTooDeepError(text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos))
    raise AssertionError("unreachable: the fast scan found a level too many")  # pragma: no cover
