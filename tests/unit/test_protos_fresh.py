"""The committed protobuf modules must match what scripts/gen_protos.py generates now."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_generated_protos_are_fresh(tmp_path: pathlib.Path) -> None:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.generate(tmp_path)
    fresh = sorted(p.name for p in (tmp_path / "protos").iterdir())
    assert fresh, "generator wrote nothing"
    committed = sorted(
        p.name
        for p in (ROOT / "protos").iterdir()
        if p.suffix in (".py", ".pyi") and "_pb2" in p.name
    )
    assert fresh == committed
    stale = [
        name
        for name in fresh
        if (tmp_path / "protos" / name).read_bytes() != (ROOT / "protos" / name).read_bytes()
    ]
    assert not stale, f"regenerate with `make protos`: stale {stale}"
