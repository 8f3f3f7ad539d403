"""How typed objects are laid out in the KV store: keys, values, continue tokens.

Pure functions, no I/O. An object lives at ``/registry/<plural>/<namespace>/<name>``
(cluster-scoped kinds: ``/registry/<plural>/<name>``) as its serialized
message with ``metadata.resource_version`` cleared: the version is the key's
mod revision, filled in when the value is read.

Secrets are the exception: ``ValueCodec`` seals their serialized message with
the store's keyring (mizzen/security/encryption.py; the storage key is the
associated data) and opens it again on every read path — Get, List, Watch and
the writes' own reads all decode through it, so no caller sees an envelope.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf.message import DecodeError, Message

from mizzen.api import kinds
from mizzen.api.kinds import KindInfo
from mizzen.echo import echo_repr
from mizzen.security.encryption import Keyring, SealedValueError, is_sealed, key_name_of
from protos import objects_api_pb2 as api

from .errors import Code, StoreError

REGISTRY = "/registry/"
MAX_REVISION = 2**63 - 1  # revisions are int64 on the wire

_FIELD_BY_KIND: dict[str, str] = {
    field.message_type.full_name: field.name  # type: ignore[union-attr]
    for field in api.Object.DESCRIPTOR.oneofs_by_name["object"].fields
}


def resolve_kind(name: str) -> KindInfo:
    """The kind a request names, or INVALID_ARGUMENT."""
    if not name:
        raise StoreError(Code.INVALID_ARGUMENT, "kind is required")
    try:
        return kinds.lookup(name)
    except kinds.UnknownKindError as err:
        raise StoreError(Code.INVALID_ARGUMENT, str(err)) from None


def kind_prefix(info: KindInfo, namespace: str = "") -> bytes:
    """The key prefix of every object of a kind, or of one namespace of it."""
    if namespace and info.namespaced:
        return f"{REGISTRY}{info.plural}/{namespace}/".encode()
    return f"{REGISTRY}{info.plural}/".encode()


def object_key(info: KindInfo, namespace: str, name: str) -> bytes:
    if info.namespaced:
        if not namespace:
            raise StoreError(Code.INVALID_ARGUMENT, f"namespace is required for {info.plural}")
        return f"{REGISTRY}{info.plural}/{namespace}/{name}".encode()
    return f"{REGISTRY}{info.plural}/{name}".encode()


def storage_key(obj: Message) -> bytes:
    meta: Any = obj.metadata  # type: ignore[attr-defined]
    return object_key(kinds.kind_of(obj), meta.namespace, meta.name)


def wrap(obj: Message) -> api.Object:
    """The Object envelope holding obj."""
    out = api.Object()
    getattr(out, _FIELD_BY_KIND[obj.DESCRIPTOR.full_name]).CopyFrom(obj)
    return out


def unwrap(envelope: api.Object) -> Message:
    """The object inside an envelope (a copy), or INVALID_ARGUMENT when empty."""
    which = envelope.WhichOneof("object")
    if which is None:
        raise StoreError(Code.INVALID_ARGUMENT, "object is required")
    inner: Message = getattr(envelope, which)
    copy = type(inner)()
    copy.CopyFrom(inner)
    return copy


def encode(obj: Message) -> bytes:
    """The stored value: obj without its resource_version."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    copy.metadata.ClearField("resource_version")  # type: ignore[attr-defined]
    return copy.SerializeToString(deterministic=True)


class UndecodableError(StoreError):
    """A stored value that is not a valid message of its key's kind (DATA_LOSS).

    Only the raw KV API (admin-only) can put such a value under ``/registry/``.
    Lists and watches skip it (and say so), Get and updates name the key, and
    Delete removes it.
    """

    def __init__(self, info: KindInfo, key: bytes, reason: str) -> None:
        shown = key.decode("utf-8", "replace")
        super().__init__(
            Code.DATA_LOSS,
            f"{shown}: the stored value does not decode as a {info.kind} ({reason}); "
            f"delete it (mizzen delete {info.singular} NAME) or put a valid one",
        )
        self.key = shown


SECRET = "Secret"
NO_KEY = (
    "this store member has no --encryption-key-file, and Secrets are encrypted at rest: "
    "it stores none (mizzen pki init writes encryption.yaml)"
)


def decode(
    info: KindInfo,
    value: bytes,
    mod_revision: int,
    key: bytes = b"",
    keyring: Keyring | None = None,
) -> Message:
    """The object stored as value at mod_revision; UndecodableError if it is not one.

    A sealed Secret is opened with keyring first (no keyring: UndecodableError).
    """
    if info.kind == SECRET and is_sealed(value):
        if keyring is None:
            raise UndecodableError(
                info, key, "it is encrypted and this store member has no --encryption-key-file"
            )
        try:
            value = keyring.open(value, key).plaintext
        except SealedValueError as err:
            raise UndecodableError(info, key, str(err)) from None
    obj = info.message()
    try:
        obj.ParseFromString(value)
    except DecodeError as err:
        raise UndecodableError(info, key, str(err)) from None
    obj.metadata.resource_version = str(mod_revision)  # type: ignore[attr-defined]
    return obj


def parse_resource_version(value: str, what: str = "resource_version") -> int:
    """A resource_version string as a revision; empty is 0.

    At most MAX_REVISION - 1: a watch starts at the revision after it.
    """
    if not value:
        return 0
    try:
        rev = int(value)
    except ValueError:
        rev = -1
    if not 0 <= rev < MAX_REVISION:
        raise StoreError(
            Code.INVALID_ARGUMENT, f"invalid {what} {echo_repr(value)}: want a revision"
        )
    return rev


def encode_continue(next_key: bytes, revision: int) -> str:
    """An opaque token: where the next page starts and the revision all pages read at."""
    raw = json.dumps({"k": base64.b64encode(next_key).decode(), "r": revision})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_continue(token: str, prefix: bytes) -> tuple[bytes, int]:
    """(next key, revision) of a token made by encode_continue for a list of prefix."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        key = base64.b64decode(data["k"], validate=True)
        revision = int(data["r"])
    # RecursionError: json's parser recurses per level of a token nested thousands deep
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError, binascii.Error):
        raise StoreError(Code.INVALID_ARGUMENT, "invalid continue token") from None
    if not key.startswith(prefix) or not 0 < revision <= MAX_REVISION:
        raise StoreError(Code.INVALID_ARGUMENT, "continue token does not belong to this list")
    return key, revision


class ValueCodec:
    """Stored values of one store: Secrets sealed with its keyring, everything else plain.

    Without a keyring, Secrets are stored in plain protobuf unless ``require_key``
    (a secure store), which refuses to store any (FAILED_PRECONDITION).
    """

    def __init__(self, keyring: Keyring | None = None, *, require_key: bool = False) -> None:
        self.keyring = keyring
        self.require_key = require_key

    def value(self, info: KindInfo, key: bytes, obj: Message) -> bytes:
        """What to store at key for obj."""
        plain = encode(obj)
        if info.kind != SECRET:
            return plain
        if self.keyring is None:
            if self.require_key:
                raise StoreError(Code.FAILED_PRECONDITION, NO_KEY)
            return plain
        return self.keyring.seal(plain, key)

    def decode(self, info: KindInfo, value: bytes, mod_revision: int, key: bytes) -> Message:
        return decode(info, value, mod_revision, key, self.keyring)

    def stale(self, info: KindInfo, value: bytes) -> bool:
        """Whether a stored value should be written again though its content is unchanged:
        a Secret not sealed with the primary key (an older key, or stored in plain)."""
        if info.kind != SECRET or self.keyring is None:
            return False
        return key_name_of(value) != self.keyring.primary
