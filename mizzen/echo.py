"""Request values repeated in error messages, kept short.

A gRPC status message travels in the HTTP/2 trailers, and peers refuse
metadata over 8 KiB: an error that repeated a 20,000-character name whole
reached the client as RESOURCE_EXHAUSTED "received metadata size exceeds
hard limit" instead of the INVALID_ARGUMENT naming the field. So:

- every value taken from a request and put in an error goes through echo()
  (or echo_repr()): beyond ECHO_LIMIT characters it is cut and says how long
  it was, ``aaaa…(20000 chars)``;
- a list of problems is joined with join_bounded(), which stops at a budget
  and counts the rest, ``…; (498 more)``;
- bounded_status() is the net at the boundary (every servicer's abort): a
  status message over MAX_STATUS_BYTES of UTF-8 is cut. The limit leaves room
  for gRPC's percent-encoding of non-ASCII bytes (3 bytes each) and the other
  trailers.
"""

from __future__ import annotations

from collections.abc import Iterable

ECHO_LIMIT = 100
MAX_STATUS_BYTES = 1800


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """str(value), cut after limit characters with the full length noted."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…({len(text)} chars)"


def echo_repr(value: object, limit: int = ECHO_LIMIT) -> str:
    """repr() of a value for an error, the value cut as by echo() (a str stays quoted)."""
    if isinstance(value, str):
        return repr(echo(value, limit))
    return echo(repr(value), limit)


def join_bounded(parts: Iterable[str], sep: str = "; ", budget: int = MAX_STATUS_BYTES // 2) -> str:
    """parts joined with sep, as many as fit in budget characters; then ``(N more)``."""
    items = list(parts)
    out: list[str] = []
    used = 0
    for part in items:
        cost = len(part) + (len(sep) if out else 0)
        if out and used + cost > budget:
            break
        out.append(part)
        used += cost
    rest = len(items) - len(out)
    return sep.join(out) + (f"{sep}({rest} more)" if rest else "")


def bounded_status(message: str, limit: int = MAX_STATUS_BYTES) -> str:
    """message, cut to at most limit bytes of UTF-8 (and the note of its length)."""
    raw = message.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return message
    note = f"…({len(message)} chars)"
    head = raw[: limit - len(note.encode())].decode("utf-8", "ignore")
    return head + note
