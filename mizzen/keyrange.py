"""etcd's key ranges: the one ``prefix_end`` the store, the SDK, tests and benches use."""

from __future__ import annotations


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix (etcd's
    GetPrefixRangeEnd: trailing 0xff bytes are dropped; ``b"\\0"`` means all keys)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"
