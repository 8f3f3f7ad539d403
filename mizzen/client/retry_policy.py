"""When the store client may retry a failed RPC on another endpoint — pure, no I/O.

The policy, in full:

* **Reads** (Range, a Txn made only of Range ops, Status, MemberList,
  LeaseTimeToLive, LeaseLeases) and the Watch / LeaseKeepAlive streams are
  idempotent. They are retried on the next endpoint on any UNAVAILABLE or
  DEADLINE_EXCEEDED (and RESOURCE_EXHAUSTED "too many requests") until the
  call's overall timeout; streams resume on any status except the permanent
  ones in ``STREAM_FATAL``.
* **Writes** (Put, DeleteRange, a Txn with a write op, Compact, LeaseGrant,
  LeaseRevoke) are retried *only* when the failure proves nothing was proposed:

  - the endpoint's channel never became READY, so the request was never sent
    (checked by the client before sending);
  - gRPC failed the call while picking a connection (UNAVAILABLE "failed to
    connect to all addresses", "Connection refused", ...): the request never
    left this process;
  - the server answered UNAVAILABLE / RESOURCE_EXHAUSTED with a message that
    means it refused before proposing ("no leader" — the client sends etcd's
    ``hasleader`` metadata so a leaderless member rejects up front — or
    "too many requests"). A Mizzen server must only use these words when it
    proposed nothing.

  A refusal that carries a ``retry-after`` trailer (``mizzen.retry_after``:
  a write quota, a full proposal queue) is retried after that long, starting
  from the same endpoint order, or fails at once with ``retry_after`` set on
  the error when that is past the call's deadline (``EndpointPool.call``).

  Any other transport failure of a write (UNAVAILABLE "Socket closed", a
  deadline, UNKNOWN, INTERNAL, CANCELLED, ...) is **ambiguous**: the write may
  or may not have been applied, so the client raises ``AmbiguousWriteError``
  and never retries it behind the caller's back.
* Every other status is a definite answer from a server (INVALID_ARGUMENT,
  NOT_FOUND, OUT_OF_RANGE "compacted", FAILED_PRECONDITION, ...) and is
  translated by ``errors.translate`` without retrying.
"""

from __future__ import annotations

import enum

import grpc

NEVER_SENT_MARKERS: tuple[str, ...] = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "failed to connect to remote host",
    "connection refused",
    "there is no address available",
    "there is no connection available",
    "dns resolution failed",
    "name resolution failure",
)
"""gRPC UNAVAILABLE details raised while picking a connection: nothing was sent."""

NOT_PROPOSED_MARKERS: tuple[str, ...] = (
    "no leader",
    "too many requests",
)
"""Server messages that mean the request was refused before anything was proposed."""

READ_RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)

WRITE_AMBIGUOUS: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
    }
)

STREAM_FATAL: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
"""Stream statuses that are a server's definite answer; every other one resumes."""


class Refusal(enum.Enum):
    """Why a channel could not connect, when the cause is the endpoint refusing us."""

    FINAL = "final"
    """A TLS handshake this client rejected, reason given (the server's certificate
    does not verify, the server does not speak TLS): retrying cannot help."""
    CLOSED = "closed"
    """The server closed the connection during the handshake: what a TLS server
    does to a client without an acceptable certificate or to a plaintext client,
    but also what one dying mid-connect does, so it counts only once it lasts."""
    NOT_LISTENING = "not listening"
    """The TCP connection itself was refused: nothing listens at that address (the
    store is down, or it is restarting, so this too counts only once it lasts)."""


def connect_refusal(reason: str) -> Refusal | None:
    """Classify gRPC's last connect error for a channel (None: not a refusal)."""
    lowered = reason.lower()
    if "handshake failed" in lowered or "hostname verification check failed" in lowered:
        return Refusal.FINAL
    if "socket closed" in lowered:
        return Refusal.CLOSED
    if "connection refused" in lowered:
        return Refusal.NOT_LISTENING
    return None


class Verdict(enum.Enum):
    RETRY = "retry"
    """Try again (another endpoint first): the outcome is known not to have happened."""
    FAIL = "fail"
    """A definite answer: translate and raise."""
    AMBIGUOUS = "ambiguous"
    """A write that may or may not have been applied: raise AmbiguousWriteError."""


def never_sent(code: grpc.StatusCode, details: str) -> bool:
    """The call failed before the request left this process."""
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in NEVER_SENT_MARKERS)


def refused_before_proposal(code: grpc.StatusCode, details: str) -> bool:
    """A server answered that it proposed nothing (e.g. it has no leader)."""
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in NOT_PROPOSED_MARKERS)


def classify(code: grpc.StatusCode, details: str, *, mutating: bool) -> Verdict:
    """What to do with a unary call that failed with (code, details)."""
    if never_sent(code, details) or refused_before_proposal(code, details):
        return Verdict.RETRY
    if mutating:
        return Verdict.AMBIGUOUS if code in WRITE_AMBIGUOUS else Verdict.FAIL
    return Verdict.RETRY if code in READ_RETRYABLE else Verdict.FAIL


def stream_resumable(code: grpc.StatusCode) -> bool:
    """A Watch / LeaseKeepAlive stream that ended with this status may be reopened."""
    return code not in STREAM_FATAL
