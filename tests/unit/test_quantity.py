"""Kubernetes quantities: parsing to typed integers, formatting back, int-or-percent."""

from __future__ import annotations

import pytest

from mizzen.api import quantity
from mizzen.api.quantity import QuantityError


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("500m", 500),
        ("1.5", 1500),
        ("2", 2000),
        ("0.1", 100),
        ("0", 0),
        (".5", 500),
        ("1e-3", 1),
        ("1k", 1_000_000),
        (" 250m ", 250),
        (2, 2000),
        (0.25, 250),
        ("100000000u", 100_000),
    ],
)
def test_parse_cpu(text: str | int | float, millis: int) -> None:
    assert quantity.parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100u", "finer than the smallest unit"),
        ("0.0005", "finer than the smallest unit"),
        ("-1", "must not be negative"),
        ("abc", "must match"),
        ("", "must match"),
        ("1.5x", "unknown suffix"),
        ("1 m", "unknown suffix"),
        ("m", "must match"),
        ("1e99", "exponent out of range"),
        (True, "must be a number or string"),
        (float("inf"), "must be a finite number"),
        (float("nan"), "must be a finite number"),
        ("inf", "must match"),
    ],
)
def test_parse_cpu_rejects(text: str | int | float, message: str) -> None:
    with pytest.raises(QuantityError, match=message):
        quantity.parse_cpu(text)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("1G", 10**9),
        ("1000", 1000),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1E", 10**18),
        ("1Ki", 1024),
        ("1k", 1000),
        ("2Ti", 2 * 2**40),
        ("1000m", 1),
        (4096, 4096),
    ],
)
def test_parse_memory(text: str | int, nbytes: int) -> None:
    assert quantity.parse_memory(text) == nbytes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5", "not a whole number of bytes"),
        ("1500m", "not a whole number of bytes"),
        ("-1Mi", "must not be negative"),
        ("1MB", "unknown suffix"),
        ("1mi", "unknown suffix"),
        ("Gi", "must match"),
    ],
)
def test_parse_memory_rejects(text: str, message: str) -> None:
    with pytest.raises(QuantityError, match=message):
        quantity.parse_memory(text)


@pytest.mark.parametrize(("text", "count"), [("100", 100), ("1k", 1000), (64, 64)])
def test_parse_count(text: str | int, count: int) -> None:
    assert quantity.parse_count(text) == count


@pytest.mark.parametrize("text", ["1.5", "-3", "10m"])
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        quantity.parse_count(text)


@pytest.mark.parametrize(
    ("millis", "text"), [(500, "500m"), (2000, "2"), (1500, "1500m"), (0, "0"), (1, "1m")]
)
def test_format_cpu(millis: int, text: str) -> None:
    assert quantity.format_cpu(millis) == text
    assert quantity.parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0"),
        (1, "1"),
        (1000, "1k"),
        (1024, "1Ki"),
        (1500, "1500"),
        (128 * 2**20, "128Mi"),
        (2**30, "1Gi"),
        (10**9, "1G"),
        (3 * 2**29, "1536Mi"),
        (10**18, "1E"),
    ],
)
def test_format_memory_round_trips(nbytes: int, text: str) -> None:
    assert quantity.format_memory(nbytes) == text
    assert quantity.parse_memory(text) == nbytes


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("3", (3, False)), ("25%", (25, True)), ("0", (0, False)), ("0%", (0, True))],
)
def test_parse_int_or_percent(text: str, parsed: tuple[int, bool]) -> None:
    assert quantity.parse_int_or_percent(text) == parsed


@pytest.mark.parametrize("text", ["", "%", "-1", "1.5", "25 %", "a%"])
def test_parse_int_or_percent_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        quantity.parse_int_or_percent(text)


@pytest.mark.parametrize(
    ("text", "total", "round_up", "amount"),
    [
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        ("2", 10, True, 2),
        ("100%", 7, False, 7),
        ("0%", 7, True, 0),
    ],
)
def test_resolve_int_or_percent(text: str, total: int, round_up: bool, amount: int) -> None:
    assert quantity.resolve_int_or_percent(text, total, round_up=round_up) == amount
