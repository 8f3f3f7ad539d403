"""`mizzen label`, `mizzen annotate` (kubectl's shape) and `mizzen edit`.

``label KIND/NAME... k=v k2-`` (or ``KIND NAME... k=v``, or ``KIND -l SELECTOR|--all
k=v``) sets and removes labels; ``annotate`` does the same for annotations.
Keys and values are checked with the rules the store applies (qualified
names; label values), before anything is sent. A key that already has another
value is a one-line error naming it unless ``--overwrite``. Each object is
read, changed and written with Update at the resourceVersion read; a conflict
(someone wrote in between) is retried on a fresh read. One line per object
("pod/web labeled", or "not labeled" when nothing changed); an object that
fails is an error line on stderr, the others are still done, exit code 1.

``edit KIND/NAME`` writes the object as YAML to a temporary file, opens
``$EDITOR`` (default ``vi``) on it and writes the saved object back with
Update at the resourceVersion read. An unchanged file is "Edit cancelled, no
changes made."; a file that does not load, an object the store refuses, or
a conflict re-opens the file with the error as ``#`` comments at the top (as
kubectl does). After a conflict the file carries the latest resourceVersion:
saving it again replaces what the other writer did. The temporary file is
removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from mizzen.api import kinds, names
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.kinds import KindInfo
from mizzen.api.manifest import ManifestError, dump_yaml, load_manifests
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import (
    change_one,
    client_options,
    error_message,
    kind_and_name,
    with_objects_client,
)
from mizzen.client.errors import ConflictError, InvalidArgumentError, StoreClientError
from mizzen.client.objects import ObjectsClient

DEFAULT_EDITOR = "vi"
CANCELLED = "Edit cancelled, no changes made."


class _Intermixed(argparse.ArgumentParser):
    """Options anywhere among the words (``label pods -l app=web tier=x``), as kubectl takes
    them: argparse alone stops filling a positional list at the first option."""

    _inside = False

    def parse_known_args(  # type: ignore[override]
        self, args: Any = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_label_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    saved = sub._parser_class
    sub._parser_class = _Intermixed
    try:
        _add_label_parsers(sub)
    finally:
        sub._parser_class = saved


def _add_label_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command, what in (("label", "labels"), ("annotate", "annotations")):
        p = sub.add_parser(
            command,
            parents=[client_options()],
            help=f"set (k=v) or remove (k-) {what} of objects",
        )
        p.add_argument("words", nargs="+", metavar="KIND/NAME... KEY=VALUE... KEY-...")
        p.add_argument("-n", "--namespace", default=None)
        p.add_argument("--overwrite", action="store_true", help="replace existing values")
        p.add_argument("-l", "--selector", default="", help="every object of KIND it selects")
        p.add_argument("--all", action="store_true", help="every object of KIND")
        p.set_defaults(func=run_label, client_command=True, field=what)

    p = sub.add_parser(
        "edit", parents=[client_options()], help="edit an object in $EDITOR and save it"
    )
    p.add_argument("target", nargs="+", metavar="KIND/NAME")
    p.add_argument("-n", "--namespace", default=None)
    p.set_defaults(func=run_edit, client_command=True)


# ------------------------------------------------------------------ label / annotate


@dataclass(frozen=True)
class Changes:
    """What a label/annotate command line asks for."""

    field: str  # "labels" or "annotations"
    set: dict[str, str]
    remove: tuple[str, ...]


def parse_changes(words: list[str], field: str) -> tuple[list[str], Changes]:
    """(the object words, the changes): k=v sets, k- removes, validated as the store would."""
    objects: list[str] = []
    to_set: dict[str, str] = {}
    remove: list[str] = []
    problems: list[str] = []
    for word in words:
        if "=" in word:
            key, _, value = word.partition("=")
            to_set[key] = value
            problems += [f"{field} key {key!r}: {p}" for p in names.qualified_name(key)]
            if field == "labels":
                problems += [f"label value {value!r}: {p}" for p in names.label_value(value)]
        elif word.endswith("-") and objects:
            key = word[:-1]
            remove.append(key)
            problems += [f"{field} key {key!r}: {p}" for p in names.qualified_name(key)]
        else:
            if to_set or remove:
                raise UsageError(f"{word!r}: objects must come before the {field} to change")
            objects.append(word)
    if not to_set and not remove:
        raise UsageError(f"give at least one {field[:-1]} to set (KEY=VALUE) or remove (KEY-)")
    both = sorted(set(to_set) & set(remove))
    if both:
        raise UsageError(f"can not both modify and remove {field[:-1]} {both[0]!r}")
    if problems:
        raise UsageError(problems[0])
    return objects, Changes(field, to_set, tuple(remove))


def apply_changes(obj: Any, changes: Changes, overwrite: bool) -> bool:
    """Change obj's labels or annotations in place; whether anything changed.

    CommandError naming the key when one already has another value and not overwrite.
    """
    current = getattr(obj.metadata, changes.field)
    if not overwrite:
        for key, value in sorted(changes.set.items()):
            if key in current and current[key] != value:
                raise CommandError(
                    f"'{key}' already has a value ({current[key]}), and --overwrite is false"
                )
    before = dict(current)
    current.update(changes.set)
    for key in changes.remove:
        current.pop(key, None)
    return dict(current) != before


def _objects(words: list[str], args: argparse.Namespace) -> tuple[KindInfo, list[str]]:
    """(the kind, the names) the object words and -l/--all name."""
    try:
        if len(words) == 1 and "/" in words[0]:
            kind, _, name = words[0].partition("/")
            found = [(kinds.lookup(kind), name)]
        elif words and all("/" in w for w in words):
            found = [(kinds.lookup(w.partition("/")[0]), w.partition("/")[2]) for w in words]
        elif words and "/" not in words[0]:
            info = kinds.lookup(words[0])
            found = [(info, name) for name in words[1:]]
            if not found and not (args.selector or args.all):
                raise UsageError(f"give the names of the {info.plural}, -l SELECTOR or --all")
            if found and (args.selector or args.all):
                raise UsageError("give either names or -l/--all, not both")
            return info, [name for _, name in found]
        else:
            raise UsageError("expected KIND/NAME..., or KIND NAME..., or KIND -l SELECTOR")
    except kinds.UnknownKindError as err:
        raise CommandError(error_message(err, [])) from None
    if args.selector or args.all:
        raise UsageError("-l/--all take a KIND, not KIND/NAME")
    infos = {info.kind for info, _ in found}
    if len(infos) > 1:
        raise UsageError("objects of one kind at a time")
    if any(not name for _, name in found):
        raise UsageError("expected KIND/NAME with a name")
    return found[0][0], [name for _, name in found]


def run_label(args: argparse.Namespace) -> int:
    words, changes = parse_changes(list(args.words), args.field)
    info, wanted = _objects(words, args)
    namespace = (args.namespace or DEFAULT_NAMESPACE) if info.namespaced else ""
    verb = "labeled" if changes.field == "labels" else "annotated"

    async def body(client: ObjectsClient) -> int:
        todo = wanted
        if args.selector or args.all:
            listed = await client.list(info, namespace, label_selector=args.selector)
            todo = [o.metadata.name for o in listed.items]
            if not todo:
                where = f" in {namespace} namespace" if namespace else ""
                print(f"No resources found{where}.", file=sys.stderr)
        failed = 0
        for name in todo:
            try:
                changed = await change_one(
                    client,
                    info,
                    name,
                    namespace,
                    lambda obj: apply_changes(obj, changes, args.overwrite),
                )
            except CommandError as err:
                print(f"mizzen: {info.singular}/{name}: {err}", file=sys.stderr)
                failed += 1
                continue
            except StoreClientError as err:
                print(f"mizzen: {error_message(err, [])}", file=sys.stderr)
                failed += 1
                continue
            print(f"{info.singular}/{name} {verb if changed else 'not ' + verb}", flush=True)
        return 1 if failed else 0

    return with_objects_client(args, body)


# ------------------------------------------------------------------ edit


HEADER = (
    "# Please edit the object below. Lines beginning with a '#' will be ignored,\n"
    "# and an empty file will abort the edit. If an error occurs while saving this file\n"
    "# will be reopened with the relevant failures.\n"
    "#\n"
)


def with_errors(body: str, errors: list[str]) -> str:
    lines = [f"# {line}" for err in errors for line in err.splitlines()]
    return HEADER + "".join(f"{line}\n" for line in lines) + ("#\n" if lines else "") + body


def strip_comments(text: str) -> str:
    """text without its leading # lines (the header and errors this command wrote)."""
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        i += 1
    return "".join(lines[i:])


def open_editor(path: str) -> None:
    editor = shlex.split(os.environ.get("EDITOR", "") or DEFAULT_EDITOR)
    try:
        done = subprocess.run([*editor, path], check=False)
    except OSError as err:
        raise CommandError(f"cannot start the editor {editor[0]!r}: {err.strerror}") from None
    if done.returncode != 0:
        raise CommandError(f"the editor {editor[0]!r} exited with {done.returncode}; no changes")


def loaded(text: str, info: KindInfo, original: Any) -> Any:
    """The edited object; ValueError with the reason when it is not a valid edit of original."""
    manifests = load_manifests(text, "edited file")
    if len(manifests) != 1:
        raise ValueError(f"the file must hold one object, it holds {len(manifests)}")
    obj: Any = manifests[0].message
    if manifests[0].kind.kind != info.kind:
        raise ValueError(f"kind cannot be changed (was {info.kind})")
    meta, was = obj.metadata, original.metadata
    if meta.name != was.name or (info.namespaced and meta.namespace != was.namespace):
        raise ValueError("metadata.name and metadata.namespace cannot be changed")
    return obj


def run_edit(args: argparse.Namespace) -> int:
    info, name = kind_and_name(args.target)
    namespace = (args.namespace or DEFAULT_NAMESPACE) if info.namespaced else ""

    async def body(client: ObjectsClient) -> int:
        original = await client.get(info, name, namespace)
        shown = dump_yaml([original])
        fd, path = tempfile.mkstemp(prefix=f"mizzen-edit-{info.singular}-", suffix=".yaml")
        os.close(fd)
        errors: list[str] = []
        conflicted = False  # after a conflict, saving the file as it is writes it
        try:
            while True:
                with open(path, "w") as f:
                    f.write(with_errors(shown, errors))
                await asyncio.to_thread(open_editor, path)
                with open(path) as f:
                    edited = strip_comments(f.read())
                unchanged = edited == shown and not conflicted
                conflicted = False
                if not edited.strip() or unchanged:
                    if errors:
                        raise CommandError("Edit cancelled, no valid changes were saved.")
                    print(CANCELLED, flush=True)
                    return 0
                try:
                    obj = loaded(edited, info, original)
                except (ManifestError, ValueError) as err:
                    shown, errors = edited, [f"error: {err}"]
                    continue
                if obj == original:
                    print(CANCELLED, flush=True)
                    return 0
                obj.metadata.resource_version = original.metadata.resource_version
                try:
                    await client.update(obj)
                except ConflictError as err:
                    original = await client.get(info, name, namespace)
                    shown, conflicted = edited, True
                    errors = [
                        f"error: {error_message(err, [])}",
                        "The object changed since it was read. Saving this file again writes",
                        "it over the latest version (check what changed with mizzen get).",
                    ]
                    continue
                except InvalidArgumentError as err:
                    shown, errors = edited, [f"error: {error_message(err, [])}"]
                    continue
                print(f"{info.singular}/{name} edited", flush=True)
                return 0
        finally:
            os.unlink(path)

    return with_objects_client(args, body)


__all__ = ["add_label_parsers", "apply_changes", "parse_changes", "strip_comments", "with_errors"]
