"""Failpoints: named places where a test can make a store pause (as etcd's gofail does).

A store started with ``MIZZEN_FAILPOINT_DIR=DIR`` checks, at each
``failpoint("name")``, for a file ``DIR/arm.name``. When it is there, the
process writes ``DIR/failpoint.name.<pid>`` and sleeps for the number of
seconds the arm file holds (default 120), so a crash test can ``kill -9`` it
at exactly that point; the test arms and disarms points while the store runs.
Without the variable a failpoint costs one global lookup. Only tests set it.
"""

from __future__ import annotations

import os
import time

DIR_ENV = "MIZZEN_FAILPOINT_DIR"
_dir = os.environ.get(DIR_ENV) or None


def failpoint(name: str) -> None:
    """Pause here if a test armed ``name`` (see the module docstring)."""
    if _dir is None:
        return
    try:
        with open(os.path.join(_dir, f"arm.{name}")) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return
    with open(os.path.join(_dir, f"failpoint.{name}.{os.getpid()}"), "w") as f:
        f.write(str(time.time()))
    time.sleep(float(text or 120))
