"""When the store client stops waiting for endpoints that refuse it: at the TLS handshake,
or with nothing listening (TCP connection refused)."""

from __future__ import annotations

import asyncio

import pytest

from mizzen.client.endpoints import REFUSAL_WINDOW, Connection, EndpointPool, Refusals
from mizzen.client.errors import UnavailableError
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
        (REFUSED, Refusal.NOT_LISTENING),  # down, or restarting: counts once it lasts
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
    r.note("b", REFUSED)  # not for a whole window yet
    assert not r.everywhere(["a", "b"])
    r.note("b", BAD_CERT)
    assert r.everywhere(["a", "b"])
    r.note("c", "Deadline Exceeded")
    assert not r.everywhere(["a", "b", "c"])


def test_nothing_listening_counts_once_it_lasts() -> None:
    clock = Clock()
    r = Refusals(clock)
    r.note("a", REFUSED)
    r.note("b", REFUSED)
    clock.now += REFUSAL_WINDOW / 2
    r.note("a", REFUSED)
    assert not r.everywhere(["a", "b"])
    clock.now += REFUSAL_WINDOW / 2
    assert r.everywhere(["a", "b"])
    assert r.kinds(["a", "b"]) == {Refusal.NOT_LISTENING}
    r.note("b", CLOSED)  # b listens again (and closes in the handshake): starts over
    assert not r.everywhere(["a", "b"])


class RefusingConnection:
    """A Connection whose connects are refused until attempt number `listens_at`."""

    def __init__(self, address: str, clock: Clock, listens_at: int | None) -> None:
        self.address = address
        self.clock = clock
        self.listens_at = listens_at
        self.attempts = 0

    async def ready(self, timeout: float) -> bool:
        self.clock.now += 0.25  # each attempt takes a moment of the fake clock
        self.attempts += 1
        return self.listens_at is not None and self.attempts >= self.listens_at

    async def failure(self) -> str | None:
        return REFUSED.replace("127.0.0.1:2379", self.address)


def _pool(clock: Clock, endpoints: list[str], listens_at: int | None = None) -> EndpointPool:
    def connect(address: str) -> Connection:
        return RefusingConnection(address, clock, listens_at)  # type: ignore[return-value]

    return EndpointPool(endpoints, timeout=5.0, connect=connect, clock=clock)


async def _answer(conn: object, timeout: float, metadata: object) -> str:
    return "answer"


def test_a_call_gives_up_when_nothing_listens_anywhere() -> None:
    clock = Clock()
    pool = _pool(clock, ["h1:2379", "h2:2379"])
    with pytest.raises(UnavailableError) as info:
        asyncio.run(pool.call(_answer, mutating=False, what="list"))
    # not "no endpoint answered within 5.0s": it stopped after a window of refusals
    assert str(info.value) == "list: nothing is listening at h1:2379, h2:2379"


def test_a_store_that_listens_again_within_the_window_answers() -> None:
    clock = Clock()
    # refused twice (0.5 s of the fake clock), then the restarted store listens
    pool = _pool(clock, ["h1:2379"], listens_at=3)
    assert asyncio.run(pool.call(_answer, mutating=False)) == "answer"
    # the same store listening only after the window: the call gives up
    late = _pool(Clock(), ["h1:2379"], listens_at=50)
    with pytest.raises(UnavailableError, match="nothing is listening at h1:2379"):
        asyncio.run(late.call(_answer, mutating=False))
