"""etcd's key range conventions: [key, range_end), "\\0" for "to the end", prefixes."""

from __future__ import annotations


def range_bounds(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """Return (lo, hi): hi None means the single key; hi b"" means unbounded above.

    Follows etcd: an empty range_end selects only key; range_end "\\0" selects
    every key >= key; key "\\0" with range_end "\\0" selects everything.
    """
    if not range_end:
        return key, None
    if range_end == b"\0":
        return key, b""
    return key, range_end


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    lo, hi = range_bounds(key, range_end)
    if hi is None:
        return k == lo
    return k >= lo and (hi == b"" or k < hi)
