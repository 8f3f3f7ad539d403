"""etcd's key range conventions (store/keyspace.py), checked against etcd 3.4's clientv3."""

from __future__ import annotations

import random

import pytest

from mizzen.keyrange import prefix_end
from store.keyspace import in_range, range_bounds


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"/registry/pods/", b"/registry/pods0"),
        (b"ab\xfe", b"ab\xff"),
        (b"a\xff", b"b"),  # trailing 0xff bytes are dropped, like clientv3.GetPrefixRangeEnd
        (b"a\xff\xff", b"b"),
        (b"\x00", b"\x01"),
        (b"\xff", b"\0"),  # no next prefix: "\0" means "every key >= prefix"
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),  # with key "\0" this selects the whole key space
    ],
)
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


@pytest.mark.parametrize(
    ("key", "range_end", "bounds"),
    [
        (b"a", b"", (b"a", None)),  # empty range_end: the single key
        (b"a", b"\0", (b"a", b"")),  # "\0": every key >= key
        (b"\0", b"\0", (b"\0", b"")),  # everything
        (b"a", b"c", (b"a", b"c")),
        (b"c", b"a", (b"c", b"a")),  # an empty range is not an error
    ],
)
def test_range_bounds(key: bytes, range_end: bytes, bounds: tuple[bytes, bytes | None]) -> None:
    assert range_bounds(key, range_end) == bounds


@pytest.mark.parametrize(
    ("k", "key", "range_end", "inside"),
    [
        (b"a", b"a", b"", True),
        (b"ab", b"a", b"", False),
        (b"a", b"a", b"b", True),  # key is inclusive
        (b"b", b"a", b"b", False),  # range_end is exclusive
        (b"a\xff\xff", b"a", b"b", True),
        (b"", b"a", b"b", False),
        (b"z", b"a", b"\0", True),
        (b"\xff\xff", b"a", b"\0", True),
        (b"0", b"a", b"\0", False),
        (b"\0", b"\0", b"\0", True),
        (b"anything", b"\0", b"\0", True),
        (b"b", b"c", b"a", False),  # inverted range selects nothing
        (b"c", b"c", b"a", False),
    ],
)
def test_in_range(k: bytes, key: bytes, range_end: bytes, inside: bool) -> None:
    assert in_range(k, key, range_end) is inside


def test_prefix_range_selects_exactly_the_keys_with_that_prefix() -> None:
    rng = random.Random(7)
    alphabet = [b"\x00", b"a", b"b", b"\xfe", b"\xff"]

    def word(n: int) -> bytes:
        return b"".join(rng.choice(alphabet) for _ in range(n))

    for _ in range(3000):
        prefix = word(rng.randint(1, 3))
        k = word(rng.randint(1, 5))
        assert in_range(k, prefix, prefix_end(prefix)) is k.startswith(prefix), (prefix, k)
