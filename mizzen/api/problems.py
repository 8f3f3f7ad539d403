"""What is wrong with a manifest: ``Problem`` lines and the ``ManifestError`` that carries them.

Apart from ``mizzen.api.manifest`` (which needs YAML) so that every command can
recognise the error without paying for the loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest; str() is the line shown to the user."""

    source: str
    # 1-based document number; None when the source could not be read at all.
    document: int | None
    message: str
    path: str = ""
    # "Deployment web": kind and name, as far as the document says them.
    label: str = ""

    def __str__(self) -> str:
        parts = [self.source]
        if self.document is not None:
            where = f"document {self.document}"
            parts.append(f"{where} ({self.label})" if self.label else where)
        if self.path:
            parts.append(self.path)
        parts.append(self.message)
        return ": ".join(parts)


class ManifestError(ValueError):
    """Manifests that cannot be loaded; the message has one line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))
