"""`mizzen wait --for=... KIND/NAME... [-l selector]`: block until objects meet a condition.

kubectl's shape:

    mizzen wait --for=condition=Available deployment/web --timeout 60s
    mizzen wait --for=condition=Ready=False pod -l app=web
    mizzen wait --for=delete pod/web-7c9f
    mizzen wait --for=jsonpath='{.status.phase}'=Succeeded pod/once

* ``condition=NAME[=VALUE]``: a condition of type NAME in ``status.conditions``
  (case-insensitive) has status VALUE (default ``True``, case-insensitive);
* ``delete``: the object is gone (an object already absent is met at once);
* ``jsonpath={.a.b[0].c}=VALUE``: the field at that path (manifest names, as
  ``mizzen get -o yaml`` shows them) equals VALUE; without ``=VALUE``, the
  field exists and is not empty. Dotted names and ``[N]`` indexes only.

Targets are ``KIND/NAME`` words, ``KIND NAME...``, or ``KIND -l SELECTOR``
(every object the selector matches, as it changes; none at the start is an
error, as kubectl's "no matching resources found"). A named object that does
not exist is an error at once, except for ``--for=delete``.

Driven by watches (``mizzen.cli.watching``), not polling: each event re-checks
every target; the only timer is ``--timeout`` (default 30s; 0: wait forever).
Prints ``<kind>/<name> condition met`` once per object as it is met, and exits
0 when all are; at the timeout it exits 1 with one line naming every object
that did not meet it.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mizzen.api import kinds
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.manifest_convert import encode
from mizzen.api.selectors import SelectorError, parse_label_selector
from mizzen.cli.config import add_credential_flags
from mizzen.cli.durations import duration_arg
from mizzen.cli.errors import CommandError, UsageError
from mizzen.cli.runner import error_message, out, with_objects_client
from mizzen.cli.watching import Watching
from mizzen.client.objects import ObjectsClient

DEFAULT_TIMEOUT = 30.0


# ------------------------------------------------------------------ --for


@dataclass(frozen=True)
class ForCondition:
    name: str
    value: str = "True"

    def __str__(self) -> str:
        return f"condition={self.name}" + ("" if self.value == "True" else f"={self.value}")


@dataclass(frozen=True)
class ForDelete:
    def __str__(self) -> str:
        return "delete"


@dataclass(frozen=True)
class ForJsonPath:
    expression: str
    path: tuple[str | int, ...]
    value: str | None = None

    def __str__(self) -> str:
        return f"jsonpath={self.expression}" + ("" if self.value is None else f"={self.value}")


WaitFor = ForCondition | ForDelete | ForJsonPath

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def parse_jsonpath(expression: str) -> tuple[str | int, ...]:
    """``{.status.conditions[0].type}`` as ("status", "conditions", 0, "type")."""
    inner = expression.strip()
    if inner.startswith("{") and inner.endswith("}"):
        inner = inner[1:-1]
    if not inner.startswith("."):
        raise UsageError(f"--for=jsonpath: {expression!r}: expected a path like {{.status.phase}}")
    steps: list[str | int] = []
    pos = 0
    for match in _STEP.finditer(inner):
        if match.start() != pos:
            break
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if pos != len(inner) or not steps:
        raise UsageError(
            f"--for=jsonpath: {expression!r}: only dotted names and [N] indexes are supported"
        )
    return tuple(steps)


def parse_for(text: str) -> WaitFor:
    """The --for value: delete, condition=NAME[=VALUE] or jsonpath={...}[=VALUE]."""
    kind, sep, rest = text.partition("=")
    if text == "delete":
        return ForDelete()
    if kind == "condition" and sep:
        name, has_value, status = rest.partition("=")
        if not name or (has_value and not status):
            raise UsageError(f"--for={text}: expected condition=NAME or condition=NAME=VALUE")
        return ForCondition(name, status if has_value else "True")
    if kind == "jsonpath" and sep:
        expr = rest.strip()
        value: str | None = None
        for quote in ("'", '"'):  # jsonpath='{.a}'=b, when the shell kept the quotes
            if expr.startswith(quote) and quote in expr[1:]:
                end = expr.index(quote, 1)
                expr, tail = expr[1:end], expr[end + 1 :]
                if tail:
                    if not tail.startswith("="):
                        raise UsageError(f"--for={text}: expected jsonpath={{...}}=VALUE")
                    value = tail[1:]
                return ForJsonPath(expr, parse_jsonpath(expr), value)
        if expr.startswith("{"):
            end = expr.find("}")
            if end < 0:
                raise UsageError(f"--for={text}: the path has no closing brace")
            path, tail = expr[: end + 1], expr[end + 1 :]
        else:
            path, eq, after = expr.partition("=")
            tail = eq + after
        if tail:
            if not tail.startswith("="):
                raise UsageError(f"--for={text}: expected jsonpath={{...}}=VALUE")
            value = tail[1:]
        return ForJsonPath(path, parse_jsonpath(path), value)
    raise UsageError(
        f"--for={text}: expected delete, condition=NAME[=VALUE] or jsonpath={{.path}}=VALUE"
    )


def _lookup(doc: Any, path: tuple[str | int, ...]) -> tuple[bool, Any]:
    for step in path:
        if isinstance(step, int):
            if not isinstance(doc, list) or step >= len(doc):
                return False, None
            doc = doc[step]
        else:
            if not isinstance(doc, dict) or step not in doc:
                return False, None
            doc = doc[step]
    return True, doc


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def met(obj: Any | None, want: WaitFor) -> bool:
    """Whether obj (None: absent) meets want."""
    if isinstance(want, ForDelete):
        return obj is None
    if obj is None:
        return False
    if isinstance(want, ForCondition):
        status = getattr(obj, "status", None)
        for cond in getattr(status, "conditions", ()):
            if cond.type.lower() == want.name.lower():
                return bool(cond.status.lower() == want.value.lower())
        return False
    found, value = _lookup(encode(obj), want.path)
    if want.value is None:
        return found and value not in (None, "", [], {})
    return found and _text(value) == want.value


# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Targets:
    info: kinds.KindInfo
    names: tuple[str, ...]  # empty: by selector (or every object with --all)
    selector: str = ""


def parse_targets(words: list[str], selector: str, everything: bool) -> list[Targets]:
    """KIND/NAME..., KIND NAME..., or KIND with -l / --all."""
    if not words:
        raise UsageError("wait: name the objects: KIND/NAME..., or KIND -l SELECTOR")

    def kind(name: str) -> kinds.KindInfo:
        try:
            return kinds.lookup(name)
        except kinds.UnknownKindError as err:
            raise CommandError(error_message(err, [])) from None

    if selector:
        try:
            parse_label_selector(selector)
        except SelectorError as err:
            raise UsageError(f"-l {selector!r}: {err}") from None
    if all("/" in w for w in words):
        if selector or everything:
            raise UsageError("wait: -l/--all go with a KIND, not with KIND/NAME")
        grouped: dict[str, list[str]] = {}
        infos: dict[str, kinds.KindInfo] = {}
        for w in words:
            k, _, name = w.partition("/")
            if not name or not k:
                raise UsageError(f"wait: {w!r}: expected KIND/NAME")
            info = kind(k)
            infos[info.kind] = info
            grouped.setdefault(info.kind, []).append(name)
        return [Targets(infos[k], tuple(names)) for k, names in grouped.items()]
    if any("/" in w for w in words):
        raise UsageError("wait: use either KIND/NAME words or KIND NAME..., not both")
    info, names = kind(words[0]), tuple(words[1:])
    if names and (selector or everything):
        raise UsageError("wait: names cannot be combined with -l or --all")
    if not names and not selector and not everything:
        raise UsageError(f"wait: {words[0]}: give NAMEs, -l SELECTOR or --all")
    return [Targets(info, names, selector)]


# ------------------------------------------------------------------ command


def add_wait_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "wait",
        help="wait until objects meet a condition, are deleted, or a field has a value",
    )
    p.add_argument("target", nargs="+", metavar="KIND/NAME")
    p.add_argument(
        "--for",
        dest="wait_for",
        required=True,
        metavar="CONDITION",
        help="condition=NAME[=VALUE], delete, or jsonpath='{.status.phase}'=VALUE",
    )
    p.add_argument("-l", "--selector", default="", help="label selector (with a KIND)")
    p.add_argument("--all", action="store_true", help="every object of the KIND")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument(
        "--timeout",
        type=duration_arg,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="give up after this long (e.g. 30s, 5m; 0: never; default 30s)",
    )
    p.add_argument("--endpoints", default=None, help="store endpoints host:port,...")
    p.add_argument("--request-timeout", type=float, default=5.0)
    add_credential_flags(p)
    p.set_defaults(func=run_wait, client_command=True)


def _label(info: kinds.KindInfo, name: str) -> str:
    return f"{info.singular}/{name}"


async def wait_for(
    client: ObjectsClient,
    targets: list[Targets],
    namespace: str,
    want: WaitFor,
    *,
    timeout: float,
    out: Callable[[str], None] = print,
) -> None:
    """Return once every target meets want; CommandError at the timeout (see module doc)."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    async with Watching(client) as w:
        for t in targets:
            w.watch(t.info.kind, namespace, t.selector)
        try:
            await w.start(deadline)
        except TimeoutError:
            raise CommandError(f"timed out after {timeout:g}s listing the objects") from None
        for t in targets:
            if isinstance(want, ForDelete):
                continue
            if t.names:
                missing = [n for n in t.names if w.get(t.info.kind, namespace, n) is None]
                if missing:
                    raise CommandError(f'{t.info.plural} "{missing[0]}" not found')
            elif not w.list(t.info.kind, namespace, t.selector):
                raise CommandError("no matching resources found")
        reported: set[str] = set()
        while True:
            pending: list[str] = []
            for t in targets:
                if t.names:
                    objects = [(n, w.get(t.info.kind, namespace, n)) for n in t.names]
                else:
                    listed = w.list(t.info.kind, namespace, t.selector)
                    objects = [(o.metadata.name, o) for o in listed]
                for name, obj in objects:
                    label = _label(t.info, name)
                    if met(obj, want):
                        if label not in reported:
                            reported.add(label)
                            out(f"{label} condition met")
                    else:
                        pending.append(label)
            if not pending:
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise CommandError(
                    f"timed out after {timeout:g}s waiting for {want} on {', '.join(pending)}"
                )
            await w.changed(until=deadline)


def run_wait(args: argparse.Namespace) -> int:
    want = parse_for(args.wait_for)
    targets = parse_targets(args.target, args.selector, args.all)
    namespace = args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        await wait_for(
            client,
            targets,
            namespace,
            want,
            timeout=args.timeout,
            out=out,
        )
        return 0

    return with_objects_client(args, body)


__all__ = ["ForCondition", "ForDelete", "ForJsonPath", "met", "parse_for", "parse_targets"]
