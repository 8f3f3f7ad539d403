"""Request values echoed in errors stay short (mizzen/echo.py)."""

from __future__ import annotations

from mizzen.api.field_errors import FieldErrors
from mizzen.echo import MAX_STATUS_BYTES, bounded_status, echo, echo_repr, join_bounded


def test_echo_cuts_long_values_and_says_how_long() -> None:
    assert echo("web") == "web"
    assert echo("a" * 20_000) == "a" * 100 + "…(20000 chars)"
    assert echo_repr("x" * 101, limit=3) == "'xxx…(101 chars)'"
    assert echo_repr(b"ab") == "b'ab'"


def test_join_bounded_counts_what_it_left_out() -> None:
    assert join_bounded(["a", "b"]) == "a; b"
    assert join_bounded([f"e{i}" for i in range(10)], budget=10) == "e0; e1; e2; (7 more)"
    # the first part always shows, even over the budget
    assert join_bounded(["x" * 50, "y"], budget=10) == "x" * 50 + "; (1 more)"


def test_bounded_status_counts_utf8_bytes() -> None:
    assert bounded_status("short") == "short"
    cut = bounded_status("é" * 5000)
    assert len(cut.encode()) <= MAX_STATUS_BYTES
    assert cut.endswith("…(5000 chars)")


def test_label_keys_in_field_paths_are_cut() -> None:
    errs = FieldErrors()
    errs.labels({"k" * 5000: "v"}, "metadata.labels")
    (error,) = errs.items
    assert error.path == f"metadata.labels[{'k' * 100}…(5000 chars)]"
    errs.enum("spec.restartPolicy", "z" * 5000, ("Always",))
    assert len(str(errs.items[-1])) < 300
