"""How `apply --wait` shows progress: live lines in a terminal, plain lines otherwise.

Both take ``update(rows)`` with one (label, Verdict) per followed object, in a
fixed order, after every change the watches delivered, and ``close()`` at the
end.

* ``LiveDisplay`` (a terminal): one line per object, redrawn in place with
  ``rich.live.Live`` — a mark (… ✓ ✗), the object, its counts
  (``2/3 updated, 1/3 ready, 1/3 available``) and the current blocker in
  words. Redrawn only when something changed (no refresh thread); the last
  state stays on screen.
* ``PlainDisplay`` (stdout not a terminal, or ``--output plain``): a line each
  time an object's line changes, ``deployment/web: 1/3 updated, ...; web-7c9f:
  CrashLoopBackOff: exit code 1``, and ``deployment/web: converged (...)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TextIO

from mizzen.cli.convergence import Verdict

Rows = Sequence[tuple[str, Verdict]]


class Display(Protocol):
    def update(self, rows: Rows) -> None: ...

    def close(self) -> None: ...


def plain_line(label: str, verdict: Verdict) -> str:
    if verdict.state == "done":
        return f"{label}: converged ({verdict.counts})" if verdict.counts else f"{label}: converged"
    text = f"{label}: {verdict.counts}" if verdict.counts else f"{label}: waiting"
    if verdict.state == "failed":
        return f"{text}; failed: {verdict.message}"
    return f"{text}; {verdict.message}" if verdict.message else text


class PlainDisplay:
    def __init__(self, out: Callable[[str], None]) -> None:
        self._out = out
        self._last: dict[str, str] = {}

    def update(self, rows: Rows) -> None:
        for label, verdict in rows:
            line = plain_line(label, verdict)
            if self._last.get(label) != line:
                self._last[label] = line
                self._out(line)

    def close(self) -> None:
        pass


MARKS = {"waiting": ("…", "yellow"), "done": ("✓", "green"), "failed": ("✗", "bold red")}


class LiveDisplay:
    def __init__(self, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=stream or sys.stdout)
        self._live = Live(console=self._console, auto_refresh=False, transient=False)
        self._started = False

    def _render(self, rows: Rows) -> object:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(overflow="fold")
        for label, verdict in rows:
            mark, style = MARKS[verdict.state]
            counts = verdict.counts or ("applied" if verdict.state == "done" else "waiting")
            message = verdict.message
            if verdict.state == "failed":
                message = f"failed: {message}"
            table.add_row(
                Text(mark, style=style),
                Text(label, style="bold"),
                Text(counts),
                Text(message, style="red" if verdict.state == "failed" else "dim"),
            )
        return table

    def update(self, rows: Rows) -> None:
        if not self._started:
            self._live.start()
            self._started = True
        self._live.update(self._render(rows), refresh=True)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._started:
            self._live.stop()
            self._started = False


def make_display(output: str, out: Callable[[str], None], stream: TextIO | None = None) -> Display:
    """Live in a terminal unless output is "plain"; plain lines otherwise."""
    target = stream or sys.stdout
    if output != "plain" and target.isatty():
        return LiveDisplay(target)
    return PlainDisplay(out)


__all__ = ["Display", "LiveDisplay", "PlainDisplay", "make_display", "plain_line"]
