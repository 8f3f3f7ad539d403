"""Durations on the command line as kubectl writes them: ``30s``, ``5m``, ``1h30m``, ``90``."""

from __future__ import annotations

import argparse
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds; a bare number is seconds. ValueError names what was wrong."""
    value = text.strip()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or pos == 0:
            raise ValueError(f"invalid duration {text!r} (e.g. 30s, 5m, 1h30m)") from None
    if seconds < 0:
        raise ValueError(f"invalid duration {text!r}: negative")
    return seconds


def duration_arg(text: str) -> float:
    """parse_duration for argparse (its error becomes a usage line)."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


__all__ = ["duration_arg", "parse_duration"]
