"""Client-side errors, translated from gRPC status codes and etcd messages in one place.

Every RPC failure the client does not retry away leaves through ``translate``
(or becomes an ``AmbiguousWriteError`` / ``UnavailableError`` chosen by the
retry policy), so callers catch domain exceptions, never ``grpc.RpcError``.
"""

from __future__ import annotations

import grpc


class StoreClientError(Exception):
    """Base of every error raised by the store client.

    ``code`` and ``details`` are the gRPC status that caused it, when there was one;
    ``retry_after`` the seconds the server said to wait before trying again (its
    ``retry-after`` trailer), if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        details: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        self.retry_after = retry_after


class NotFoundError(StoreClientError):
    """The thing named does not exist (a lease, a member)."""


class LeaseNotFoundError(NotFoundError):
    """The lease does not exist (never granted, revoked or expired)."""


class InvalidArgumentError(StoreClientError):
    """The server rejected the request as malformed; retrying cannot help.

    For objects the message is the server's, naming every invalid field path.
    """


class FailedPreconditionError(StoreClientError):
    """The request is well-formed but the store's state forbids it (e.g. lease exists)."""


class AlreadyExistsError(FailedPreconditionError):
    """An object (or lease) with this name already exists."""


class FencedError(FailedPreconditionError):
    """A fenced write was refused: the fence key is gone or was re-created (leadership lost)."""


class ConflictError(StoreClientError):
    """An object was modified since it was read (ABORTED): reread and apply the change again."""


class PermissionDeniedError(StoreClientError):
    """The caller is not allowed to do this."""


class ResourceExhaustedError(StoreClientError):
    """The server refused the request for a limit (a rate limit, a write quota, a full
    proposal queue) or for its size; ``retry_after`` says when trying again can
    succeed, when the server said."""


class CompactedError(StoreClientError):
    """The revision asked for was compacted away; the caller must relist.

    ``compact_revision`` is the store's compacted revision when the server said
    it (watches always do), else 0.
    """

    def __init__(
        self,
        compact_revision: int,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        details: str = "",
    ) -> None:
        text = message or f"revision compacted (compact revision {compact_revision})"
        super().__init__(text, code=code, details=details)
        self.compact_revision = compact_revision


class FutureRevisionError(StoreClientError):
    """The revision asked for is newer than the store's current revision."""


class UnavailableError(StoreClientError):
    """No endpoint could serve the request within the timeout.

    For a write this is definite: every attempt failed in a way that proves
    nothing was proposed (see ``retry_policy``), so the write did not happen.
    """


class AmbiguousWriteError(StoreClientError):
    """A write failed after it may have reached a server: it may or may not have happened.

    The client never retries such a write itself. Callers resolve it by reading
    back (e.g. compare the key's mod_revision) or by retrying an idempotent txn.
    """


class LeaseExpiredError(StoreClientError):
    """A kept-alive lease was lost: the server reported TTL <= 0, or renewal failed
    for longer than the TTL so the lease must be presumed expired."""


_BY_CODE: dict[grpc.StatusCode, type[StoreClientError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def translate(
    code: grpc.StatusCode, details: str | None, *, retry_after: float | None = None
) -> StoreClientError:
    """The domain error for a final (not retried) gRPC status."""
    error = _translate(code, details)
    error.retry_after = retry_after
    return error


def _translate(code: grpc.StatusCode, details: str | None) -> StoreClientError:
    text = details or ""
    lowered = text.lower()
    if "compacted" in lowered:
        return CompactedError(0, text, code=code, details=text)
    if "future revision" in lowered:
        return FutureRevisionError(text, code=code, details=text)
    if "lease not found" in lowered:
        return LeaseNotFoundError(text, code=code, details=text)
    if code == grpc.StatusCode.FAILED_PRECONDITION and text.startswith("fenced:"):
        return FencedError(text, code=code, details=text)
    kind = _BY_CODE.get(code, StoreClientError)
    return kind(f"{code.name}: {text}" if text else code.name, code=code, details=text)


def from_rpc_error(err: grpc.RpcError) -> StoreClientError:
    """``translate`` applied to a grpc error object (aio or sync)."""
    code, details = status_of(err)
    return translate(code, details)


def status_of(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """(code, details) of a grpc error; UNKNOWN when the object carries none."""
    code_fn = getattr(err, "code", None)
    details_fn = getattr(err, "details", None)
    code = code_fn() if callable(code_fn) else None
    details = details_fn() if callable(details_fn) else None
    return (code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN), str(
        details or ""
    )
