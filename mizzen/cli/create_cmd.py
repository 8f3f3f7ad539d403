"""`mizzen create configmap|secret generic` (kubectl's shape) and `mizzen secrets reencrypt`.

``create configmap NAME`` and ``create secret generic NAME`` build the object
from any number of sources, in order:

* ``--from-literal KEY=VALUE``
* ``--from-file [KEY=]PATH``: the file's content under KEY (default: the file's
  name); a directory adds each regular file in it under its name;
* ``--from-env-file PATH``: ``KEY=VALUE`` lines (blank lines and lines starting
  with ``#`` are skipped; the value is the rest of the line, quotes included,
  as kubectl does).

A key given twice is an error. A ConfigMap keeps a file that is not UTF-8 text
in ``binaryData``; a Secret keeps bytes as they are. ``--dry-run`` prints the
object (``-o yaml`` or ``json``) instead of creating it, so ``mizzen create
secret generic db --from-literal password=... --dry-run -o yaml > db.yaml``
gives a manifest. Errors never repeat a value (only keys, file names and the
number of the argument).

``secrets reencrypt [-n NS | -A]`` writes every Secret again unchanged: the
store rewrites a Secret whose stored value is not sealed with its key file's
first key (docs/security.md, "Key rotation"), and leaves the others alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

from mizzen.api import kinds
from mizzen.api.defaults import DEFAULT_NAMESPACE
from mizzen.api.manifest import dump_json, dump_yaml
from mizzen.api.names import config_key
from mizzen.cli.errors import UsageError
from mizzen.cli.runner import client_options, out, with_objects_client
from mizzen.client.errors import ConflictError, NotFoundError
from mizzen.client.objects import ObjectsClient
from protos import objects_pb2 as pb

SECRETS = kinds.lookup("secrets")
CONFLICT_ATTEMPTS = 3


def add_create_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = client_options()
    p = sub.add_parser("create", help="create a ConfigMap or Secret from literals and files")
    what = p.add_subparsers(dest="create_kind", required=True, metavar="configmap|secret")

    cm = what.add_parser("configmap", aliases=["cm"], parents=[common], help="create a ConfigMap")
    _sources(cm)
    cm.set_defaults(func=run_create_configmap, client_command=True)

    secret = what.add_parser("secret", help="create a Secret")
    types = secret.add_subparsers(dest="secret_type", required=True, metavar="generic")
    generic = types.add_parser(
        "generic", parents=[common], help="create a Secret from literals and files"
    )
    _sources(generic)
    generic.add_argument("--type", default="Opaque", help="the Secret's type (default Opaque)")
    generic.set_defaults(func=run_create_secret, client_command=True)

    s = sub.add_parser("secrets", help="maintenance of Secrets")
    actions = s.add_subparsers(dest="secrets_command", required=True, metavar="reencrypt")
    r = actions.add_parser(
        "reencrypt",
        parents=[common],
        help="write every Secret again so that it is sealed with the store's first key",
    )
    r.add_argument("-n", "--namespace", default=None)
    r.add_argument("-A", "--all-namespaces", action="store_true")
    r.set_defaults(func=run_reencrypt, client_command=True)


def _sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument(
        "--from-literal", action="append", default=[], metavar="KEY=VALUE", dest="sources",
        type=lambda v: ("literal", v),
    )  # fmt: skip
    p.add_argument(
        "--from-file", action="append", metavar="[KEY=]PATH", dest="sources",
        type=lambda v: ("file", v),
    )  # fmt: skip
    p.add_argument(
        "--from-env-file", action="append", metavar="PATH", dest="sources",
        type=lambda v: ("env-file", v),
    )  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the object, do not create it")
    p.add_argument("-o", "--output", choices=["yaml", "json", "name"], default=None)


# ------------------------------------------------------------------ sources


def _literal(text: str, number: int) -> tuple[str, bytes]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--from-literal #{number}: expected KEY=VALUE")
    return key, value.encode()


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror or err}") from None


def _files(text: str) -> Iterator[tuple[str, bytes]]:
    key, sep, path = text.partition("=")
    if sep and not key:
        raise UsageError(f"--from-file {text}: expected [KEY=]PATH")
    if not sep:
        key, path = "", text
    if os.path.isdir(path):
        if key:
            raise UsageError(f"--from-file {text}: a KEY cannot be given for a directory")
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full):
                yield name, _read(full, "--from-file")
        return
    yield key or os.path.basename(path.rstrip("/")), _read(path, "--from-file")


def _env_file(path: str) -> Iterator[tuple[str, bytes]]:
    data = _read(path, "--from-env-file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--from-env-file {path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key:
            raise UsageError(f"--from-env-file {path}: line {number}: expected KEY=VALUE")
        yield key, value.encode()


def collect(sources: list[tuple[str, str]]) -> dict[str, bytes]:
    """Every key and value the sources give, in order; UsageError naming a bad key or source."""
    out: dict[str, bytes] = {}
    literal = 0
    for kind, text in sources:
        if kind == "literal":
            literal += 1
            pairs: Iterator[tuple[str, bytes]] = iter([_literal(text, literal)])
        elif kind == "file":
            pairs = _files(text)
        else:
            pairs = _env_file(text)
        for key, value in pairs:
            problems = config_key(key)
            if problems:
                raise UsageError(f"invalid key {key[:100]!r}: {'; '.join(problems)}")
            if key in out:
                raise UsageError(f"key {key!r} is given twice")
            out[key] = value
    return out


def config_map(name: str, namespace: str, values: dict[str, bytes]) -> pb.ConfigMap:
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name=name, namespace=namespace))
    for key, value in values.items():
        try:
            cm.data[key] = value.decode("utf-8")
        except UnicodeDecodeError:
            cm.binary_data[key] = value
    return cm


def secret(name: str, namespace: str, values: dict[str, bytes], type_: str) -> pb.Secret:
    s = pb.Secret(metadata=pb.ObjectMeta(name=name, namespace=namespace), type=type_)
    for key, value in values.items():
        s.data[key] = value
    return s


# ------------------------------------------------------------------ commands


def _create(args: argparse.Namespace, obj: Any) -> int:
    info = kinds.kind_of(obj)
    if args.dry_run:
        if args.output == "json":
            sys.stdout.write(dump_json([obj]))
        elif args.output == "yaml":
            sys.stdout.write(dump_yaml([obj]))
        else:
            out(f"{info.singular}/{obj.metadata.name} created (dry run)")
        return 0

    async def body(client: ObjectsClient) -> int:
        created = await client.create(obj)
        if args.output == "json":
            sys.stdout.write(dump_json([created]))
        elif args.output == "yaml":
            sys.stdout.write(dump_yaml([created]))
        elif args.output == "name":
            out(f"{info.singular}/{created.metadata.name}")
        else:
            out(f"{info.singular}/{created.metadata.name} created")
        return 0

    return with_objects_client(args, body)


def run_create_configmap(args: argparse.Namespace) -> int:
    values = collect(args.sources or [])
    return _create(args, config_map(args.name, args.namespace or DEFAULT_NAMESPACE, values))


def run_create_secret(args: argparse.Namespace) -> int:
    values = collect(args.sources or [])
    ns = args.namespace or DEFAULT_NAMESPACE
    return _create(args, secret(args.name, ns, values, args.type))


def run_reencrypt(args: argparse.Namespace) -> int:
    if args.all_namespaces and args.namespace:
        raise UsageError("secrets reencrypt: give -n or -A, not both")
    namespace = "" if args.all_namespaces else args.namespace or DEFAULT_NAMESPACE

    async def body(client: ObjectsClient) -> int:
        listed = await client.list(SECRETS, namespace)
        rewritten = unchanged = 0
        for item in listed.items:
            if await _rewrite(client, item):
                rewritten += 1
            else:
                unchanged += 1
        for key in listed.undecodable_keys:
            print(f"mizzen: warning: {key} does not decode here; not rewritten", file=sys.stderr)
        out(f"{rewritten} Secret(s) rewritten with the store's first key, {unchanged} already were")
        return 1 if listed.undecodable_keys else 0

    return with_objects_client(args, body)


async def _rewrite(client: ObjectsClient, secret_obj: Any) -> bool:
    """Write secret again unchanged; whether the store made a new version."""
    meta = secret_obj.metadata
    for attempt in range(CONFLICT_ATTEMPTS):
        try:
            written = await client.update(secret_obj)
        except NotFoundError:
            return False
        except ConflictError:
            if attempt == CONFLICT_ATTEMPTS - 1:
                raise
            # changed meanwhile, so written by the store with its current key; check again
            try:
                secret_obj = await client.get(SECRETS, meta.name, meta.namespace)
            except NotFoundError:
                return False
            meta = secret_obj.metadata
            continue
        return bool(written.metadata.resource_version != meta.resource_version)
    return False
