"""When a store needs a Raft secret, and what a secret must look like (every source)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from mizzen.security import raft_secret
from mizzen.security.raft_secret import RaftSecretError, check_secret, load_secret, resolve

GOOD = "c2VjcmV0LW9mLWVub3VnaC1sZW5ndGg"
LOOP = "127.0.0.1:2379"
WIDE = "10.0.0.1:2379"


def test_only_plaintext_on_loopback_everywhere_runs_without_a_secret() -> None:
    """Every combination of TLS and loopback/non-loopback client, Raft and metrics addresses:
    exactly one (plaintext, all loopback, or metrics off) starts without a secret."""
    allowed = []
    for tls, client, raft, metrics in itertools.product(
        [False, True], [LOOP, WIDE, "0.0.0.0:2379"], [LOOP, WIDE], [None, LOOP, WIDE]
    ):
        listeners = {"--listen-client": client, "--listen-raft": raft, "--metrics-listen": metrics}
        try:
            got = resolve(None, tls, listeners, env={})
        except RaftSecretError as err:
            assert str(err).startswith("refusing to start without a Raft secret (")
            assert "\n" not in str(err)
            continue
        assert got is None
        allowed.append((tls, client, raft, metrics))
    assert allowed == [(False, LOOP, LOOP, None), (False, LOOP, LOOP, LOOP)]


def test_the_refusal_names_every_reason_and_the_fix() -> None:
    with pytest.raises(RaftSecretError) as err:
        resolve(None, True, {"--listen-client": LOOP, "--listen-raft": "0.0.0.0:2380"}, env={})
    text = str(err.value)
    assert "the client port serves TLS; --listen-raft 0.0.0.0:2380 is not loopback" in text
    assert "--peer-secret-file" in text and "$MIZZEN_RAFT_PASSWORD" in text


def test_a_secret_from_either_source_satisfies_the_requirement(tmp_path: Path) -> None:
    listeners = {"--listen-client": WIDE, "--listen-raft": WIDE}
    path = tmp_path / "raft.secret"
    path.write_text(GOOD + "\n")
    assert resolve(str(path), True, listeners, env={}) == GOOD
    assert resolve(None, True, listeners, env={"MIZZEN_RAFT_PASSWORD": GOOD}) == GOOD
    # the file wins over the environment
    assert resolve(str(path), True, listeners, env={"MIZZEN_RAFT_PASSWORD": "x" * 40}) == GOOD


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a", "too short (1 characters; want 16+"),
        ("   short-secret  \n", "too short (12 characters"),
        ("a" * 40, "too predictable (only 1 distinct characters"),
        ("abab" * 8, "too predictable (only 2 distinct"),
        ("", "too short (0 characters"),
    ],
)
def test_weak_secrets_are_refused_from_every_source(
    tmp_path: Path, value: str, message: str
) -> None:
    path = tmp_path / "raft.secret"
    path.write_text(value)
    with pytest.raises(
        RaftSecretError, match=r"^--peer-secret-file .*: Raft secret " + re.escape(message)
    ):
        load_secret(str(path), env={})
    if value:  # an empty variable is "not set"
        with pytest.raises(RaftSecretError, match=r"^\$MIZZEN_RAFT_PASSWORD: Raft secret "):
            load_secret(None, env={"MIZZEN_RAFT_PASSWORD": value})
    # a weak secret is refused even where none is required
    with pytest.raises(RaftSecretError, match="Raft secret too"):
        resolve(str(path), False, {"--listen-raft": LOOP}, env={})


def test_the_pki_secret_passes_and_an_unreadable_file_is_named(tmp_path: Path) -> None:
    from mizzen.security.pki import init_pki

    init_pki(tmp_path, ["127.0.0.1"], [])
    assert len(load_secret(str(tmp_path / "raft.secret"), env={}) or "") >= 40
    with pytest.raises(RaftSecretError, match="--peer-secret-file /nonexistent: No such file"):
        load_secret("/nonexistent", env={})
    assert check_secret(f"  {GOOD}\n", "x") == GOOD
    assert load_secret(None, env={}) is None
    assert raft_secret.MIN_LENGTH == 16
