"""Kubernetes-style resource quantities: "500m" CPU, "128Mi" memory.

Manifests carry quantities as strings (or YAML numbers); protobuf carries
typed integers: CPU in millicores, memory in bytes, pids as a count. Parsing
is exact (decimal arithmetic): a CPU amount finer than 1m or a fractional
number of bytes is an error rather than silently rounded, and negative
amounts are rejected because no resource amount is negative.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}
_QUANTITY = re.compile(r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))(?P<suffix>.*)")
_EXPONENT = re.compile(r"[eE][+-]?\d+")
_MAX_EXPONENT = 30

Amount = str | int | float


class QuantityError(ValueError):
    """A quantity string that does not parse or does not fit the resource."""


def parse_quantity(value: Amount) -> Decimal:
    """The exact value of a Kubernetes quantity ("1.5Gi", "500m", "1e3", 2)."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity must be a number or string, not {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(f"quantity {value!r} must be a finite number")
        return Decimal(repr(value))
    text = value.strip()
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise QuantityError(f"quantity {value!r} must match '<number>[suffix]', e.g. 500m or 1Gi")
    number = Decimal(match["number"])
    suffix = match["suffix"]
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    if _EXPONENT.fullmatch(suffix):
        exponent = int(suffix[1:])
        if abs(exponent) > _MAX_EXPONENT:
            raise QuantityError(f"quantity {value!r} has an exponent out of range")
        try:
            return number.scaleb(exponent)
        except InvalidOperation as exc:  # pragma: no cover - guarded by the range check
            raise QuantityError(f"quantity {value!r} is out of range") from exc
    raise QuantityError(
        f"quantity {value!r} has unknown suffix {suffix!r}; "
        "use one of Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent like e3"
    )


def _non_negative(value: Amount, amount: Decimal, what: str) -> None:
    if amount < 0:
        raise QuantityError(f"{what} {value!r} must not be negative")


def parse_cpu(value: Amount) -> int:
    """Millicores from "500m", "1.5", "2" or 0.25."""
    amount = parse_quantity(value) * 1000
    _non_negative(value, amount, "cpu")
    if amount != amount.to_integral_value():
        raise QuantityError(f"cpu {value!r} is finer than the smallest unit, 1m")
    return int(amount)


def parse_memory(value: Amount) -> int:
    """Bytes from "128Mi", "1Gi", "1G", "1000" or "1e3"."""
    amount = parse_quantity(value)
    _non_negative(value, amount, "memory")
    if amount != amount.to_integral_value():
        raise QuantityError(f"memory {value!r} is not a whole number of bytes")
    return int(amount)


def parse_count(value: Amount) -> int:
    """A whole non-negative count such as a pids limit ("1k" is 1000)."""
    amount = parse_quantity(value)
    _non_negative(value, amount, "count")
    if amount != amount.to_integral_value():
        raise QuantityError(f"count {value!r} is not a whole number")
    return int(amount)


def format_cpu(millis: int) -> str:
    """Canonical CPU string: "2" for whole cores, else "1500m"."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis}m"


def format_memory(nbytes: int) -> str:
    """Canonical memory string: the shorter of the best exact binary and decimal forms.

    Binary wins a tie ("128Mi", "1Gi", "1G", "1k", "1500"), and
    parse_memory(format_memory(n)) == n for every non-negative n.
    """
    if nbytes == 0:
        return "0"
    return min(_best(nbytes, _BINARY), _best(nbytes, _DECIMAL_INT), key=len)


_DECIMAL_INT = {s: int(f) for s, f in _DECIMAL.items() if f >= 1 and s}


def _best(nbytes: int, factors: dict[str, int]) -> str:
    for suffix, factor in sorted(factors.items(), key=lambda kv: -kv[1]):
        if nbytes % factor == 0:
            return f"{nbytes // factor}{suffix}"
    return str(nbytes)


def parse_int_or_percent(value: str) -> tuple[int, bool]:
    """Parse "3" -> (3, False) or "25%" -> (25, True); non-negative only.

    Used for max_surge and max_unavailable, which are strings in the proto.
    """
    text = value.strip()
    percent = text.endswith("%")
    digits = text[:-1] if percent else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise QuantityError(f"{value!r} must be a non-negative integer or percentage (e.g. '25%')")
    return int(digits), percent


def resolve_int_or_percent(value: str, total: int, *, round_up: bool) -> int:
    """The absolute amount: "25%" of 10 is 3 rounding up (max_surge), 2 down (max_unavailable)."""
    amount, percent = parse_int_or_percent(value)
    if not percent:
        return amount
    scaled = amount * total
    return -(-scaled // 100) if round_up else scaled // 100
