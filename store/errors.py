"""Domain errors of the store, defined once and mapped to gRPC status at the boundary."""

from __future__ import annotations

import enum

import grpc


class Code(enum.Enum):
    """The gRPC status a StoreError maps to (values are grpc.StatusCode names)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    ABORTED = "ABORTED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    DATA_LOSS = "DATA_LOSS"
    INTERNAL = "INTERNAL"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNKNOWN = "UNKNOWN"  # etcd's auth package answers some refusals with it

    @property
    def grpc(self) -> grpc.StatusCode:
        return getattr(grpc.StatusCode, self.value)


class StoreError(Exception):
    """An error the client should see, with etcd's message text where etcd has one.

    Also used as a plain value: the state machine returns it from apply rather
    than raising through the Raft loop.
    """

    def __init__(self, code: Code, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds; sent as the retry-after trailer

    def __repr__(self) -> str:
        return f"StoreError({self.code.value}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StoreError)
            and other.code == self.code
            and other.message == self.message
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


NO_LEADER = "etcdserver: no leader"
TIMEOUT = "etcdserver: request timed out"
REQUEST_TOO_LARGE = "etcdserver: request is too large"
