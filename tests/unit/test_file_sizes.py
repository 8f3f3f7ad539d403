"""Every long source file says why it is one file (docs/architecture.md, "Packages and layers").

A non-generated Python file under protos/, store/, controllers/, nodeagent/,
mizzen/ or bench/ with more than MAX_LINES lines must have, in its module
docstring, a paragraph starting with MARKER that names the single idea holding
it together. A file that cannot say so holds two ideas: split it instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protos", "store", "controllers", "nodeagent", "mizzen", "bench")
MAX_LINES = 400
MARKER = "One file because"


def long_files() -> list[Path]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            if len(path.read_text().splitlines()) > MAX_LINES:
                found.append(path)
    return found


def has_reason(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return any(p.lstrip().startswith(MARKER) for p in doc.split("\n\n"))


def test_some_files_are_long() -> None:
    # the walk finds the files (a wrong ROOT would make the real test vacuous)
    assert any(p.name == "state_machine.py" for p in long_files())


def test_every_long_file_says_why_it_is_one_file() -> None:
    missing = [str(p.relative_to(ROOT)) for p in long_files() if not has_reason(p)]
    assert not missing, (
        f"files over {MAX_LINES} lines without a docstring paragraph starting "
        f"{MARKER!r} (say what single idea holds each together, or split it): {missing}"
    )


def test_marker_must_start_a_paragraph(tmp_path: Path) -> None:
    mentioned = tmp_path / "m.py"
    mentioned.write_text(f'"""Title.\n\nSomething else. {MARKER} nothing.\n"""\n')
    assert not has_reason(mentioned)
    stated = tmp_path / "s.py"
    stated.write_text(f'"""Title.\n\n{MARKER} it is one idea.\n"""\n')
    assert has_reason(stated)
