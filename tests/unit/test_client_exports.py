"""The SDK package's names resolve lazily (mizzen/client/__init__.py), all of them."""

from __future__ import annotations

import subprocess
import sys

import mizzen.client as sdk


def test_every_exported_name_resolves_and_nothing_else_is_lazy() -> None:
    assert sorted(sdk._LAZY) == sorted(sdk.__all__)
    for name in sdk.__all__:
        value = getattr(sdk, name)
        assert getattr(value, "__name__", name) == name or callable(value), name


def test_importing_the_errors_does_not_import_the_watch_machinery() -> None:
    code = (
        "import sys, mizzen.client.errors, mizzen.client;"
        "print(sorted(m for m in ('mizzen.client.informer', 'mizzen.client.watch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        sdk.NoSuchThing  # noqa: B018
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("no AttributeError")
