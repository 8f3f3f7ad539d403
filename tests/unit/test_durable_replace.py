"""Snapshot files replace each other durably (fsync before rename, then the directory)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pysyncobj import serializer as pysyncobj_serializer

from store import raft_node


def test_durable_replace_moves_the_data_and_fsyncs_before_renaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    def rename(a: str, b: str) -> None:
        calls.append("rename")
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    (tmp_path / "snap.tmp").write_bytes(b"new")
    (tmp_path / "snap").write_bytes(b"old")
    raft_node.durable_replace(str(tmp_path / "snap.tmp"), str(tmp_path / "snap"))
    assert (tmp_path / "snap").read_bytes() == b"new"
    assert not (tmp_path / "snap.tmp").exists()
    assert calls == ["fsync", "rename", "fsync"]


def test_enabling_fsync_routes_pysyncobj_snapshots_through_durable_replace() -> None:
    raft_node.enable_journal_fsync()
    assert pysyncobj_serializer.atomicReplace is raft_node.durable_replace
