"""FieldError and the collector that validation fills, with the checks shared by all kinds.

A collector gathers every problem instead of stopping at the first, so a user
sees all bad fields of an object at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mizzen.api import names
from mizzen.echo import echo
from protos import objects_pb2 as pb

CONDITION_STATUSES = ("True", "False", "Unknown")


@dataclass(frozen=True)
class FieldError:
    """One problem with one field."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class FieldErrors:
    """The problems found so far, each with its path."""

    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(FieldError(path, message))

    def each(self, path: str, problems: Iterable[str]) -> None:
        """One error for path listing all problems, if there are any."""
        joined = "; ".join(problems)
        if joined:
            self.add(path, joined)

    def required(self, path: str, value: object) -> bool:
        if not value:
            self.add(path, "required")
            return False
        return True

    def enum(self, path: str, value: str, allowed: Sequence[str]) -> None:
        if not value:
            self.add(path, "required")
        elif value not in allowed:
            supported = ", ".join(f'"{a}"' for a in allowed)
            self.add(path, f'unsupported value "{echo(value)}": supported values: {supported}')

    def at_least(self, path: str, value: int, minimum: int) -> None:
        if value < minimum:
            self.add(path, f"must be greater than or equal to {minimum}")

    def at_most_bytes(self, path: str, value: str, limit: int) -> None:
        size = len(value.encode())
        if size > limit:
            self.add(path, f"must be at most {limit} bytes (is {size})")

    def port(self, path: str, value: int) -> None:
        if not 1 <= value <= 65535:
            self.add(path, "must be between 1 and 65535, inclusive")

    def labels(self, labels: Mapping[str, str], path: str) -> None:
        """Label keys and values; one error per bad entry at path[key]."""
        for key, value in sorted(labels.items()):
            self.each(f"{path}[{echo(key)}]", names.qualified_name(key) + names.label_value(value))

    def conditions(self, conditions: Iterable[pb.Condition], path: str) -> None:
        for i, condition in enumerate(conditions):
            self.required(f"{path}[{i}].type", condition.type)
            self.enum(f"{path}[{i}].status", condition.status, CONDITION_STATUSES)
