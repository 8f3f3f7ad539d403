"""Secrets at rest: the key file, the AES-GCM envelope, key rotation and the store's codec."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from mizzen.api.kinds import lookup
from mizzen.security.encryption import (
    ENVELOPE,
    KeyFileError,
    Keyring,
    SealedValueError,
    ensure_key_file,
    is_sealed,
    key_name_of,
    load_keyring,
    parse_key_file,
    render_key_file,
    retire_keys,
    rotate_key,
)
from mizzen.security.pki import init_pki
from protos import objects_pb2 as pb
from store.errors import Code, StoreError
from store.objects_codec import UndecodableError, ValueCodec, decode, encode

SECRETS, CONFIGMAPS = lookup("secrets"), lookup("configmaps")
KEY = b"/registry/secrets/default/db"
VALUE = b"hunter2-s3cr3t-value"
K1 = ("k1", bytes(range(32)))
K2 = ("k2", bytes(range(100, 132)))


def _secret() -> pb.Secret:
    s = pb.Secret(metadata=pb.ObjectMeta(name="db", namespace="default"), type="Opaque")
    s.data["password"] = VALUE
    return s


def test_seal_and_open_round_trip_without_the_plaintext_in_the_envelope() -> None:
    ring = Keyring([K1])
    sealed = ring.seal(VALUE, KEY)
    assert sealed.startswith(ENVELOPE + b"k1:")
    assert VALUE not in sealed
    assert is_sealed(sealed) and key_name_of(sealed) == "k1"
    assert ring.open(sealed, KEY).plaintext == VALUE
    assert ring.seal(VALUE, KEY) != sealed  # a fresh nonce every time


def test_a_wrong_key_of_the_same_name_or_another_place_does_not_open() -> None:
    sealed = Keyring([K1]).seal(VALUE, KEY)
    with pytest.raises(SealedValueError, match="does not decrypt with key 'k1'"):
        Keyring([("k1", K2[1])]).open(sealed, KEY)
    with pytest.raises(SealedValueError, match="does not decrypt"):  # moved to another key
        Keyring([K1]).open(sealed, b"/registry/secrets/default/other")
    with pytest.raises(SealedValueError, match="key 'k1', which is not in this store's key file"):
        Keyring([K2]).open(sealed, KEY)
    damaged = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SealedValueError, match="does not decrypt"):
        Keyring([K1]).open(damaged, KEY)
    with pytest.raises(SealedValueError, match="truncated"):
        Keyring([K1]).open(ENVELOPE + b"k1:abc", KEY)
    with pytest.raises(SealedValueError, match="envelope version"):
        Keyring([K1]).open(b"mizzen:enc:aesgcm:v9:k1:" + bytes(40), KEY)


def test_rotation_old_key_still_opens_new_writes_use_the_new_key() -> None:
    old = Keyring([K1]).seal(VALUE, KEY)
    rotated = Keyring([K2, K1])
    opened = rotated.open(old, KEY)
    assert opened.plaintext == VALUE and opened.stale
    new = rotated.seal(VALUE, KEY)
    assert key_name_of(new) == "k2"
    assert not rotated.open(new, KEY).stale
    with pytest.raises(SealedValueError, match="k2"):  # the old key alone cannot read it
        Keyring([K1]).open(new, KEY)


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    return path


SECRET_B64 = base64.b64encode(K1[1]).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: [", "not valid YAML at line 1"),
        ("- a", "expected a mapping with one field, keys"),
        ("keys: []", "keys: expected a non-empty list"),
        ("keys: [{name: a}]", "keys[0]: expected {name, secret}"),
        (f"keys: [{{name: 'a:b', secret: {SECRET_B64}}}]", "keys[0].name: 1-64 letters"),
        ("keys: [{name: a, secret: 'not base64!'}]", "keys[0].secret: not valid base64"),
        ("keys: [{name: a, secret: YWJj}]", "keys[0].secret: an AES key is 16, 24 or 32 bytes"),
        (
            f"keys: [{{name: a, secret: {SECRET_B64}}}, {{name: a, secret: {SECRET_B64}}}]",
            "keys[1].name: 'a' is listed twice",
        ),
    ],
)
def test_bad_key_files_are_refused_in_one_line_without_key_material(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(KeyFileError) as err:
        load_keyring(_file(tmp_path, text))
    assert message in str(err.value)
    assert "\n" not in str(err.value) and SECRET_B64 not in str(err.value)


def test_missing_or_huge_key_files(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="No such file"):
        load_keyring(tmp_path / "nope")
    with pytest.raises(KeyFileError, match="not a key file"):
        load_keyring(_file(tmp_path, "#" * 70_000))


def test_key_file_lifecycle_create_rotate_retire(tmp_path: Path) -> None:
    path = tmp_path / "pki" / "encryption.yaml"
    assert ensure_key_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    first = load_keyring(path)
    assert len(first.names) == 1
    before = path.read_bytes()
    assert not ensure_key_file(path)  # never replaced: its keys open the stored Secrets
    assert path.read_bytes() == before
    sealed = first.seal(VALUE, KEY)

    new = rotate_key(path)
    rotated = load_keyring(path)
    assert rotated.names == (new, first.primary)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert rotated.open(sealed, KEY).stale
    resealed = rotated.seal(VALUE, KEY)

    assert retire_keys(path) == [first.primary]
    retired = load_keyring(path)
    assert retired.names == (new,)
    assert retired.open(resealed, KEY).plaintext == VALUE
    with pytest.raises(SealedValueError):
        retired.open(sealed, KEY)


def test_render_is_what_parse_reads() -> None:
    keys = [K1, K2]
    assert parse_key_file(render_key_file(keys), "x") == keys


def test_pki_init_writes_the_key_file_once_and_keeps_it(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    written = init_pki(d, hosts=["127.0.0.1"], nodes=[])
    path = d / "encryption.yaml"
    assert path in written
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    keys = path.read_bytes()
    assert path not in init_pki(d, hosts=["127.0.0.1"], nodes=[])
    # --force regenerates the CA and certificates, never the key (the Secrets need it)
    assert path not in init_pki(d, hosts=["127.0.0.1"], nodes=[], force=True)
    assert path.read_bytes() == keys


# ------------------------------------------------------------------ the store's codec


def test_the_codec_seals_secrets_only_and_opens_them_on_decode() -> None:
    codec = ValueCodec(Keyring([K1]))
    secret = _secret()
    stored = codec.value(SECRETS, KEY, secret)
    assert is_sealed(stored) and VALUE not in stored
    back = codec.decode(SECRETS, stored, 9, KEY)
    assert isinstance(back, pb.Secret) and back.data["password"] == VALUE
    assert back.metadata.resource_version == "9"
    cm = pb.ConfigMap(metadata=pb.ObjectMeta(name="c", namespace="default"), data={"a": "b"})
    assert codec.value(CONFIGMAPS, b"/registry/configmaps/default/c", cm) == encode(cm)


def test_a_sealed_secret_without_the_key_is_undecodable_naming_the_key_only() -> None:
    stored = ValueCodec(Keyring([K1])).value(SECRETS, KEY, _secret())
    for codec in (ValueCodec(), ValueCodec(Keyring([K2]))):
        with pytest.raises(UndecodableError) as err:
            codec.decode(SECRETS, stored, 3, KEY)
        assert err.value.code == Code.DATA_LOSS
        assert "/registry/secrets/default/db" in err.value.message
        assert VALUE.decode() not in err.value.message
    with pytest.raises(UndecodableError, match="no --encryption-key-file"):
        decode(SECRETS, stored, 3, KEY)


def test_without_a_key_a_secure_store_refuses_and_a_plaintext_one_stores_plain() -> None:
    with pytest.raises(StoreError) as err:
        ValueCodec(require_key=True).value(SECRETS, KEY, _secret())
    assert err.value.code == Code.FAILED_PRECONDITION
    assert "--encryption-key-file" in err.value.message
    plain = ValueCodec().value(SECRETS, KEY, _secret())
    assert plain == encode(_secret())
    # a key added later still reads it, and marks it to be written again
    codec = ValueCodec(Keyring([K1]))
    back = codec.decode(SECRETS, plain, 4, KEY)
    assert isinstance(back, pb.Secret) and back.data["password"] == VALUE
    assert codec.stale(SECRETS, plain)


def test_stale_means_not_sealed_with_the_primary_key() -> None:
    old = ValueCodec(Keyring([K1])).value(SECRETS, KEY, _secret())
    rotated = ValueCodec(Keyring([K2, K1]))
    assert rotated.stale(SECRETS, old)
    assert not rotated.stale(SECRETS, rotated.value(SECRETS, KEY, _secret()))
    assert not rotated.stale(CONFIGMAPS, b"anything")
    assert not ValueCodec().stale(SECRETS, old)


def test_the_store_flag_refuses_a_bad_key_file_in_one_line(tmp_path: Path) -> None:
    from mizzen.cli.errors import UsageError
    from mizzen.cli.store_cmd import load_encryption

    bad = _file(tmp_path, "keys: [{name: a, secret: YWJj}]")
    with pytest.raises(UsageError) as err:
        load_encryption(str(bad), secure=True)
    assert str(err.value) == (
        f"--encryption-key-file: {bad}: keys[0].secret: an AES key is 16, 24 or 32 bytes, "
        "this one is 3"
    )
    with pytest.raises(UsageError, match="No such file or directory"):
        load_encryption(str(tmp_path / "missing"), secure=False)
    good = tmp_path / "good.yaml"
    ensure_key_file(good)
    ring = load_encryption(str(good), secure=True)
    assert ring is not None and ring.primary == load_keyring(good).primary
    assert load_encryption(None, secure=True) is None
