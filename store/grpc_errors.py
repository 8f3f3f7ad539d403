"""The one place where StoreError becomes a gRPC status."""

from __future__ import annotations

import structlog

from mizzen import retry_after
from mizzen.grpc_errors import ErrorMapper, Status

from .errors import StoreError

log = structlog.get_logger("store.api")


def _status_for(exc: Exception) -> Status | None:
    if isinstance(exc, StoreError):
        if exc.retry_after is not None:
            return exc.code.grpc, exc.message, retry_after.trailer(exc.retry_after)
        return exc.code.grpc, exc.message
    return None


_mapper = ErrorMapper(_status_for, log=log, internal_prefix="mizzen")

abort_for = _mapper.abort
"""End the call with the status for exc: StoreError -> its code; a bug -> INTERNAL, logged."""
grpc_errors = _mapper.unary
"""Wrap a unary servicer method: StoreError -> status; anything else -> INTERNAL, logged."""
grpc_stream_errors = _mapper.stream
"""Like grpc_errors, for a server-streaming method written as an async generator."""
