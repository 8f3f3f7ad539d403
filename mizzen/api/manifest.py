"""Manifests: Kubernetes-shaped YAML/JSON documents to typed messages and back.

A manifest is ``{apiVersion: mizzen/v1, kind, metadata, spec, status?}``.
load_manifests() parses every document of a text, reports every problem of
every document at once (one ManifestError, one line per problem naming the
source, the document number and the field path), and converts through the
protobuf JSON mapping (json_format.ParseDict). ``kind: List`` with ``items``
is accepted as several objects, because dump_json() writes several that way.

Loading a good document neither defaults nor validates: the server does both,
and a caller that wants to check early runs mizzen.api.defaults and
mizzen.api.validation. A document the decoder already found bad is also
validated, so that its one error lists every bad field (an invalid name *and*
a bad quantity *and* an unknown field), as the server's would.
to_manifest(), dump_yaml() and dump_json() go the other way, so that
load_manifests(dump_yaml(msgs)) gives messages equal to msgs.

One file because it is the manifest as text: loading every document with every
problem at once and dumping objects back are the two directions of one format
(the field conversion is in ``manifest_convert``).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from mizzen.api import kinds
from mizzen.api.defaults import apply_defaults
from mizzen.api.field_errors import FieldError
from mizzen.api.kinds import API_VERSION, KindInfo
from mizzen.api.manifest_convert import Decoder, describe, encode, join
from mizzen.api.nesting import (
    MAX_DEPTH as MAX_DEPTH,  # re-exported: manifests nest at most this deep
)
from mizzen.api.nesting import (
    JsonTooDeepError,
    LimitedSafeLoader,
    check_json_depth,
    yaml_message,
)
from mizzen.api.problems import ManifestError, Problem
from mizzen.api.validation import validate

try:  # libyaml, in PyYAML's wheels; without it manifests are read in Python only
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover
    _CParser = None  # type: ignore[assignment,misc]

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
LIST_KIND = "List"
STDIN = "-"


@dataclass(frozen=True)
class Manifest:
    """One object loaded from a manifest: where it came from and what it is."""

    kind: KindInfo
    message: Message
    # File name, or "-" for standard input.
    source: str
    # 1-based number of the document in source (empty documents count too).
    index: int


# ---------------------------------------------------------------- loading


class _StrictLoader(LimitedSafeLoader):
    """SafeLoader that rejects a key given twice in one mapping, as Kubernetes does.

    PyYAML would silently keep the last value. Keys brought in by a merge
    (``<<: *base``) may still be overridden. Nesting deeper than MAX_DEPTH is
    a syntax error at the line of the level too many, and so is a value that
    matches a type but is not one, ``2024-13-45`` (mizzen.api.nesting).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Hashable] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f'duplicate key "{key}"',
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FastLoader: type[_StrictLoader] | None = None
if _CParser is not None:

    class _CStrictLoader(_CParser, _StrictLoader):
        """_StrictLoader reading its events from libyaml's C parser.

        PyYAML's own scanner and parser are pure Python: 2,000 small pods took
        ~2.5 s to read, ~0.35 s this way. Composing (with the nesting limit),
        constructing (refusing duplicate keys) and resolving tags stay the
        Python classes' own, so a document reads as the same values. On any
        error the text is read again by _StrictLoader, whose messages (and
        line numbers) are the ones users and tests know.
        """

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

        # CParser brings a composer of its own, in C, without the nesting limit.
        check_node = Composer.check_node
        get_node = Composer.get_node
        get_single_node = Composer.get_single_node

    _FastLoader = _CStrictLoader


def load_manifests(text: str, source: str = STDIN) -> list[Manifest]:
    """Every object in text, in order; empty documents are skipped.

    A source whose name ends in ".json" is parsed as JSON (one document),
    anything else as multi-document YAML. Raises ManifestError listing every
    problem in every document.
    """
    documents = _parse(text, source)
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        _load_document(document, source, number, manifests, problems)
    if problems:
        raise ManifestError(problems)
    return manifests


def load_paths(paths: Sequence[str], *, stdin: TextIO | None = None) -> list[Manifest]:
    """Load files, directories (their *.yaml, *.yml, *.json, sorted, not recursive) and "-".

    "-" reads stdin (sys.stdin unless given). Problems of all sources are
    reported together in one ManifestError.
    """
    manifests: list[Manifest] = []
    problems: list[Problem] = []
    for path in paths:
        for source, text in _read(path, stdin, problems):
            try:
                manifests.extend(load_manifests(text, source))
            except ManifestError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return manifests


def _read(path: str, stdin: TextIO | None, problems: list[Problem]) -> Iterator[tuple[str, str]]:
    if path == STDIN:
        yield STDIN, (stdin or sys.stdin).read()
        return
    if os.path.isdir(path):
        try:
            entries = os.listdir(path)
        except OSError as exc:
            problems.append(Problem(path, None, f"cannot read: {exc.strerror or exc}"))
            return
        files = [
            os.path.join(path, name)
            for name in sorted(entries)
            if name.endswith(MANIFEST_SUFFIXES) and os.path.isfile(os.path.join(path, name))
        ]
    else:
        files = [path]
    for file in files:
        try:
            with open(file, encoding="utf-8-sig") as handle:
                text = handle.read()
        except OSError as exc:
            problems.append(Problem(file, None, f"cannot read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError as exc:
            problems.append(Problem(file, None, f"cannot read: not UTF-8 text ({exc.reason})"))
            continue
        yield file, text


def _parse(text: str, source: str) -> list[object]:
    """The documents of text, or a ManifestError naming the line of a syntax error."""
    if source.endswith(".json"):
        try:
            check_json_depth(text)
        except JsonTooDeepError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ManifestError(
                [
                    Problem(
                        source,
                        1,
                        f"invalid JSON at {where}: nested more than {MAX_DEPTH} levels deep",
                    )
                ]
            ) from None
        try:
            return [json.loads(text)] if text.strip() else []
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise ManifestError(
                [Problem(source, 1, f"invalid JSON at {where}: {exc.msg}")]
            ) from exc
    if _FastLoader is not None:
        try:
            return list(yaml.load_all(text, Loader=_FastLoader))
        except yaml.YAMLError:
            pass  # the Python parser finds it again, and says where in its own words
    documents: list[object] = []
    try:
        for document in yaml.load_all(text, Loader=_StrictLoader):
            documents.append(document)
    except yaml.YAMLError as exc:
        raise ManifestError([Problem(source, len(documents) + 1, yaml_message(exc))]) from exc
    return documents


def _load_document(
    document: object,
    source: str,
    number: int,
    manifests: list[Manifest],
    problems: list[Problem],
) -> None:
    if not isinstance(document, dict):
        problems.append(
            Problem(
                source,
                number,
                f"expected an object with apiVersion and kind, got {describe(document)}",
            )
        )
        return
    if document.get("kind") != LIST_KIND:
        _load_object(document, source, number, "", manifests, problems)
        return
    before = len(problems)
    _check_api_version(document, source, number, LIST_KIND, "", problems)
    unknown = sorted(str(key) for key in document if key not in ("apiVersion", "kind", "items"))
    for key in unknown:
        problems.append(Problem(source, number, "unknown field", key, LIST_KIND))
    items = document.get("items")
    if not isinstance(items, list):
        problems.append(
            Problem(source, number, f"expected a list, got {describe(items)}", "items", LIST_KIND)
        )
    if len(problems) > before:
        return
    assert isinstance(items, list)
    for i, item in enumerate(items):
        path = f"items[{i}]"
        if isinstance(item, dict):
            _load_object(item, source, number, path, manifests, problems)
        else:
            problems.append(
                Problem(source, number, f"expected an object, got {describe(item)}", path)
            )


def _label(obj: dict[Any, Any]) -> str:
    kind = obj.get("kind")
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    parts = [part for part in (kind, name) if isinstance(part, str) and part]
    return " ".join(parts)


def _check_api_version(
    obj: dict[Any, Any], source: str, number: int, label: str, prefix: str, problems: list[Problem]
) -> None:
    version = obj.get("apiVersion")
    path = join(prefix, "apiVersion")
    if version is None:
        problems.append(Problem(source, number, f'required: must be "{API_VERSION}"', path, label))
    elif version != API_VERSION:
        message = f'unsupported apiVersion {describe(version)}: must be "{API_VERSION}"'
        problems.append(Problem(source, number, message, path, label))


def _resolve_kind(kind: object) -> tuple[KindInfo | None, str]:
    """The kind named exactly by a manifest, or the reason it is not one."""
    if kind is None:
        return None, "required"
    if not isinstance(kind, str):
        return None, f"expected a string, got {describe(kind)}"
    known = ", ".join(info.kind for info in kinds.KINDS)
    try:
        info = kinds.lookup(kind)
    except kinds.UnknownKindError:
        return None, f'unknown kind "{kind}"; known kinds: {known}'
    if info.kind != kind:
        return None, f'unknown kind "{kind}"; did you mean "{info.kind}"?'
    return info, ""


def _load_object(
    obj: dict[Any, Any],
    source: str,
    number: int,
    prefix: str,
    manifests: list[Manifest],
    problems: list[Problem],
) -> None:
    label = _label(obj)
    before = len(problems)
    _check_api_version(obj, source, number, label, prefix, problems)
    info, reason = _resolve_kind(obj.get("kind"))
    if info is None:
        problems.append(Problem(source, number, reason, join(prefix, "kind"), label))
    if info is None or len(problems) > before:
        return
    decoder = Decoder()
    body = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
    mapping = decoder.message(body, cast(Descriptor, info.message.DESCRIPTOR), prefix)
    for error in decoder.errors:
        problems.append(Problem(source, number, error.message, error.path, label))
    if decoder.errors and mapping is not None:
        for error in _also_invalid(info, mapping, prefix, _dropped(decoder.errors)):
            problems.append(Problem(source, number, error.message, error.path, label))
    if decoder.errors or mapping is None:
        return
    message = info.message()
    try:
        json_format.ParseDict(mapping, message)
    except json_format.ParseError as exc:  # the decoder should have caught it; keep the text
        problems.append(Problem(source, number, str(exc), prefix, label))
        return
    manifests.append(Manifest(info, message, source, number))


def _also_invalid(
    info: KindInfo, mapping: dict[str, Any], prefix: str, dropped: Sequence[str]
) -> list[FieldError]:
    """What the server would also refuse in a document the decoder already found bad.

    So that one error lists every bad field (an invalid name *and* a bad
    quantity): the fields that did decode are defaulted and validated as the
    server would (in namespace "default" if none is given). Errors at, under or
    above a field the decoder dropped are left out: that field was reported
    already, and its absence is not a second mistake.
    """
    message = info.message()
    try:
        json_format.ParseDict(mapping, message)
    except json_format.ParseError:
        return []
    obj: Any = message
    if info.namespaced and not obj.metadata.namespace:
        obj.metadata.namespace = "default"
    apply_defaults(message)
    found = [FieldError(join(prefix, e.path), e.message) for e in validate(message)]
    return [e for e in found if not any(_related(e.path, path) for path in dropped)]


_DID_YOU_MEAN = re.compile(r'did you mean "([^"]+)"')


def _dropped(errors: Sequence[FieldError]) -> list[str]:
    """The paths the decoder refused, the field a misspelled one meant (``specs``: spec),
    and the whole list or map of a refused element."""
    paths = []
    for error in errors:
        paths.append(error.path)
        if error.path.endswith("]"):  # a list element gone shifts the indices after it
            paths.append(error.path[: error.path.rindex("[")])
        meant = _DID_YOU_MEAN.search(error.message)
        if meant:
            paths.append(join(error.path.rpartition(".")[0], meant.group(1)))
    return paths


def _related(a: str, b: str) -> bool:
    """Whether field path a is b, inside b, or holds b."""
    if len(a) < len(b):
        a, b = b, a
    return a == b or (a.startswith(b) and a[len(b)] in ".[")


# ---------------------------------------------------------------- dumping


def to_manifest(msg: Message) -> dict[str, Any]:
    """msg (a message of a registered kind) as a Kubernetes-shaped mapping."""
    info = kinds.kind_of(msg)
    return {"apiVersion": API_VERSION, "kind": info.kind, **encode(msg)}


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings (a ConfigMap's files) as literal blocks (``|``),
    as kubectl does; PyYAML falls back to quotes where a block cannot hold the text."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(msgs: Iterable[Message]) -> str:
    """msgs as multi-document YAML ("---" between documents)."""
    return yaml.dump_all(
        [to_manifest(msg) for msg in msgs],
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=2**16,
    )


# json.dumps(o, ensure_ascii=False) with its encoder made once, not once per item.
_ITEM_JSON = json.JSONEncoder(ensure_ascii=False)


def dump_json(msgs: Iterable[Message]) -> str:
    """One message as its object (indented); any other number as ``{kind: List, items: [...]}``.

    In a List each item is written on one line: json's indenting encoder is
    pure Python and took ~0.5 s for 10,000 pods, the compact one is in C.
    """
    objects = list(msgs)
    if len(objects) == 1:
        return json.dumps(to_manifest(objects[0]), indent=2, ensure_ascii=False) + "\n"
    return json_list([json_line(msg) for msg in objects])


def json_line(msg: Message) -> str:
    """msg's manifest as one line of JSON: an item of json_list()."""
    return _ITEM_JSON.encode(to_manifest(msg))


def json_list(lines: Sequence[str]) -> str:
    """dump_json's List of any number but one of items, each written by json_line()."""
    head = f'{{\n  "apiVersion": {json.dumps(API_VERSION)},\n  "kind": {json.dumps(LIST_KIND)},\n'
    if not lines:
        return head + '  "items": []\n}\n'
    items = ",\n".join("    " + line for line in lines)
    return head + '  "items": [\n' + items + "\n  ]\n}\n"
