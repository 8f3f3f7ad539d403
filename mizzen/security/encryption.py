"""Encryption of Secrets at rest: the key file, the keyring and the ciphertext envelope.

The key file (``mizzen pki init`` writes ``encryption.yaml``, mode 0600) lists
named AES keys, like Kubernetes' EncryptionConfiguration with its ``aesgcm``
provider: the **first** key encrypts every new write, **every** key listed
decrypts::

    # Mizzen: keys that encrypt Secrets at rest (AES-GCM). ...
    keys:
    - name: key-20261207T191308
      secret: 3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhs=   # base64 of 32 bytes

A stored value is the envelope ``mizzen:enc:aesgcm:v1:<key name>:`` followed
by a random 12-byte nonce and the AES-GCM ciphertext with its 16-byte tag.
The storage key (``/registry/secrets/<ns>/<name>``) is the associated data,
so a ciphertext moved to another key does not decrypt. The key name in the
envelope says which key decrypts it, so keys can rotate: put a new key first
(``rotate_key``), restart the store members, rewrite every Secret
(``mizzen secrets reencrypt -A``), then drop the old key (``retire_keys``).

Nothing here ever puts key material or plaintext in an exception or a log line.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = b"mizzen:enc:"
ENVELOPE = PREFIX + b"aesgcm:v1:"
NONCE_BYTES = 12
KEY_BYTES = 32  # AES-256 for new keys; 16 and 24 byte keys are accepted when loading
KEY_SIZES = (16, 24, 32)
KEY_FILE_NAME = "encryption.yaml"
MAX_KEY_FILE_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]{0,63}")

HEADER = """\
# Mizzen: keys that encrypt Secrets at rest (AES-GCM). Keep this file 0600 and
# identical on every store member; losing it loses every Secret.
# The first key encrypts new writes; every key listed decrypts.
# Rotate: `mizzen pki rotate-key --file THIS` (adds a new first key), restart
# every store member, `mizzen secrets reencrypt -A`, then
# `mizzen pki retire-keys --file THIS` and restart again.
"""


class KeyFileError(ValueError):
    """A key file that cannot be used; the text names the file and what is wrong."""


class SealedValueError(ValueError):
    """A stored envelope that does not open here; the text names the key, never the data."""


@dataclass(frozen=True)
class Opened:
    """A decrypted value and whether it should be written again with the primary key."""

    plaintext: bytes
    stale: bool


def is_sealed(value: bytes) -> bool:
    """Whether a stored value is an encryption envelope (of any version)."""
    return value.startswith(PREFIX)


def key_name_of(value: bytes) -> str | None:
    """The key name a v1 envelope names, or None for anything else."""
    if not value.startswith(ENVELOPE):
        return None
    name, sep, _ = value[len(ENVELOPE) :].partition(b":")
    return name.decode("ascii", "replace") if sep else None


class Keyring:
    """Named AES-GCM keys: the first seals, all open."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], source: str = "") -> None:
        if not keys:
            raise KeyFileError(f"{source or 'keyring'}: no keys")
        self.source = source
        self.names = tuple(name for name, _ in keys)
        if len(set(self.names)) != len(self.names):
            raise KeyFileError(f"{source or 'keyring'}: a key name is listed twice")
        self._ciphers = {name: AESGCM(secret) for name, secret in keys}
        self.primary = self.names[0]

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[self.primary].encrypt(nonce, plaintext, associated)
        return ENVELOPE + self.primary.encode() + b":" + nonce + sealed

    def open(self, value: bytes, associated: bytes) -> Opened:
        """The plaintext of an envelope; SealedValueError saying why it cannot be opened."""
        if not value.startswith(ENVELOPE):
            raise SealedValueError(
                "encrypted with an envelope version this store does not know "
                f"({value[: len(PREFIX) + 16].decode('ascii', 'replace')}...)"
            )
        name_bytes, sep, rest = value[len(ENVELOPE) :].partition(b":")
        name = name_bytes.decode("ascii", "replace")
        if not sep or len(rest) < NONCE_BYTES + 16:
            raise SealedValueError("a truncated encryption envelope")
        cipher = self._ciphers.get(name)
        if cipher is None:
            raise SealedValueError(
                f"encrypted with key {name!r}, which is not in this store's key file "
                f"({', '.join(self.names)})"
            )
        try:
            plain = cipher.decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], associated)
        except InvalidTag:
            raise SealedValueError(
                f"does not decrypt with key {name!r} (another key of that name, or damaged)"
            ) from None
        return Opened(plain, stale=name != self.primary)


def new_key(now: dt.datetime | None = None) -> tuple[str, bytes]:
    """A fresh random key named after the time (UTC)."""
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
    return f"key-{when}", secrets.token_bytes(KEY_BYTES)


def parse_key_file(text: str, source: str) -> list[tuple[str, bytes]]:
    """The (name, key) pairs of a key file's text, in order; KeyFileError naming the entry."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise KeyFileError(f"{source}: not valid YAML{where}") from None
    if not isinstance(doc, dict) or set(doc) != {"keys"}:
        raise KeyFileError(f"{source}: expected a mapping with one field, keys")
    entries = doc["keys"]
    if not isinstance(entries, list) or not entries:
        raise KeyFileError(f"{source}: keys: expected a non-empty list of {{name, secret}}")
    out: list[tuple[str, bytes]] = []
    for i, entry in enumerate(entries):
        where = f"{source}: keys[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"name", "secret"}:
            raise KeyFileError(f"{where}: expected {{name, secret}}")
        name, secret = entry["name"], entry["secret"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise KeyFileError(
                f"{where}.name: 1-64 letters, digits, '-', '_' or '.', starting with a "
                "letter or digit"
            )
        if not isinstance(secret, str):
            raise KeyFileError(f"{where}.secret: expected a base64 string")
        try:
            raw = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{where}.secret: not valid base64") from None
        if len(raw) not in KEY_SIZES:
            raise KeyFileError(
                f"{where}.secret: an AES key is 16, 24 or 32 bytes, this one is {len(raw)}"
            )
        if any(name == seen for seen, _ in out):
            raise KeyFileError(f"{where}.name: {name!r} is listed twice")
        out.append((name, raw))
    return out


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """The keyring in a key file; KeyFileError (one line, no key material) if unusable."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise KeyFileError(f"{p}: {err.strerror or err}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{p}: larger than {MAX_KEY_FILE_BYTES} bytes; not a key file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{p}: not UTF-8 text") from None
    return Keyring(parse_key_file(text, str(p)), str(p))


def loose_mode(path: str | os.PathLike[str]) -> int | None:
    """The file's mode when group or others may access it, else None."""
    mode = os.stat(path).st_mode & 0o777
    return mode if mode & 0o077 else None


def render_key_file(keys: Sequence[tuple[str, bytes]]) -> str:
    body = {"keys": [{"name": n, "secret": base64.b64encode(k).decode()} for n, k in keys]}
    return HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)


def write_key_file(path: str | os.PathLike[str], keys: Sequence[tuple[str, bytes]]) -> None:
    """Write keys to path (0600), atomically: a crash leaves the old file or the new one."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(render_key_file(keys))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_key_file(path: str | os.PathLike[str]) -> bool:
    """Create a key file with one new key unless one exists; True when it was created.

    An existing file is never replaced (its keys decrypt the stored Secrets).
    """
    p = Path(path)
    if p.exists():
        return False
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_key_file(p, [new_key()])
    return True


def rotate_key(path: str | os.PathLike[str]) -> str:
    """Put a new key first in the key file (it encrypts from the next start); its name."""
    keys = parse_key_file(Path(path).read_text(), str(path))
    name, secret = new_key()
    while any(name == n for n, _ in keys):
        name += "x"
    write_key_file(path, [(name, secret), *keys])
    return name


def retire_keys(path: str | os.PathLike[str]) -> list[str]:
    """Keep only the first key of the key file; the names of the keys dropped."""
    keys = parse_key_file(Path(path).read_text(), str(path))
    write_key_file(path, keys[:1])
    return [name for name, _ in keys[1:]]
