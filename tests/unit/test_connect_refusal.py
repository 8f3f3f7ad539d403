"""When the store client stops waiting for endpoints that refuse it at the TLS handshake."""

from __future__ import annotations

import pytest

from mizzen.client.endpoints import REFUSAL_WINDOW, Refusals
from mizzen.client.retry_policy import Refusal, connect_refusal

CLOSED = "UNAVAILABLE: ipv4:127.0.0.1:2379: Socket closed"
BAD_CERT = (
    "UNKNOWN: ipv4:127.0.0.1:2379: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
    "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED"
)
WRONG_NAME = (
    "UNKNOWN: ipv4:127.0.0.1:2379: Custom verification check failed with error: "
    "UNAUTHENTICATED: Hostname Verification Check failed."
)
REFUSED = "UNKNOWN: ipv4:127.0.0.1:2379: Failed to connect to remote host: Connection refused"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (CLOSED, Refusal.CLOSED),
        (BAD_CERT, Refusal.FINAL),
        ("ssl handshake failed: WRONG_VERSION_NUMBER", Refusal.FINAL),
        (WRONG_NAME, Refusal.FINAL),  # the certificate does not name the server we want
        (REFUSED, None),  # nothing listening: down or restarting, not refusing us
        ("Deadline Exceeded", None),
        ("", None),
    ],
)
def test_connect_refusal(reason: str, kind: Refusal | None) -> None:
    assert connect_refusal(reason) is kind


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_named_tls_failure_counts_at_once() -> None:
    r = Refusals(Clock())
    r.note("a", BAD_CERT)
    assert r.everywhere(["a"])


def test_closed_connections_count_once_they_last() -> None:
    clock = Clock()
    r = Refusals(clock)
    r.note("a", CLOSED)
    assert not r.everywhere(["a"])
    clock.now += REFUSAL_WINDOW / 2
    r.note("a", CLOSED)
    assert not r.everywhere(["a"])
    clock.now += REFUSAL_WINDOW / 2
    assert r.everywhere(["a"])


def test_any_other_outcome_starts_over() -> None:
    clock = Clock()
    r = Refusals(clock)
    r.note("a", CLOSED)
    clock.now += REFUSAL_WINDOW * 0.9
    r.note("a", REFUSED)  # it restarted: nothing listening for a moment
    r.note("a", CLOSED)
    clock.now += REFUSAL_WINDOW * 0.9
    assert not r.everywhere(["a"])
    r.note("a", None)  # connected
    clock.now += REFUSAL_WINDOW * 2
    assert not r.everywhere(["a"])


def test_one_endpoint_that_does_not_refuse_keeps_the_call_going() -> None:
    clock = Clock()
    r = Refusals(clock)
    r.note("a", BAD_CERT)
    r.note("b", REFUSED)
    assert not r.everywhere(["a", "b"])
    r.note("b", BAD_CERT)
    assert r.everywhere(["a", "b"])
    assert not r.everywhere([])
