"""Node-agent log files: layout, copytruncate rotation, tail, follow, and file selection."""

from __future__ import annotations

import asyncio
import os
import pathlib
import stat

import pytest

from nodeagent.logs import (
    DiskLogSource,
    LogNotFound,
    PodLogs,
    ProcessRequired,
    chunk_paths,
    follow,
    has_newer_instance,
    read_tail,
    rotate_if_needed,
    tail,
)


def _write(fd: int, data: bytes) -> None:
    assert os.write(fd, data) == len(data)


# ------------------------------------------------------------------ writing side


def test_open_instance_layout_mode_and_append(tmp_path: pathlib.Path) -> None:
    logs = PodLogs(str(tmp_path))
    fd = logs.open_instance("default", "web", "u1", "main", 0)
    try:
        _write(fd, b"one\n")
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    fd = logs.open_instance("default", "web", "u1", "main", 0)
    try:
        _write(fd, b"two\n")
    finally:
        os.close(fd)
    path = tmp_path / "default_web_u1" / "main" / "0.log"
    assert path.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert logs.process_dir("default", "web", "u1", "main") == str(path.parent)


def test_prune_keeps_newest_instances_with_their_chunks(tmp_path: pathlib.Path) -> None:
    logs = PodLogs(str(tmp_path))
    directory = pathlib.Path(logs.process_dir("ns", "p", "u", "web"))
    directory.mkdir(parents=True)
    for name in ["0.log", "0.log.1", "1.log", "2.log", "2.log.1", "10.log", "notes.txt"]:
        (directory / name).write_bytes(b"x")
    logs.prune("ns", "p", "u", "web", keep_instances=2)
    assert sorted(os.listdir(directory)) == ["10.log", "2.log", "2.log.1", "notes.txt"]
    logs.prune("ns", "p", "u", "missing")  # no directory: nothing to do


def test_remove_pod(tmp_path: pathlib.Path) -> None:
    logs = PodLogs(str(tmp_path))
    os.close(logs.open_instance("ns", "p", "u", "a", 0))
    logs.remove_pod("ns", "p", "u")
    assert not (tmp_path / "ns_p_u").exists()
    logs.remove_pod("ns", "p", "u")


# ------------------------------------------------------------------ rotation


def test_rotation_under_an_append_writer_keeps_every_byte(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "0.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    written = b""
    try:
        assert not rotate_if_needed(path, max_bytes=100, keep=2)  # empty
        for i in range(12):
            line = f"line {i:03d} ".encode() + b"." * 20 + b"\n"  # 30 bytes
            _write(fd, line)
            written += line
            rotate_if_needed(path, max_bytes=100, keep=2)
        _write(fd, b"last\n")
        written += b"last\n"
    finally:
        os.close(fd)
    chunks = chunk_paths(path)
    assert chunks == [path + ".2", path + ".1", path]
    assert not os.path.exists(path + ".3")
    data = b"".join(pathlib.Path(p).read_bytes() for p in chunks)
    # keep=2 dropped the oldest chunk; everything after it is there, in order, no holes.
    assert written.endswith(data)
    assert all(os.path.getsize(p) >= 100 for p in chunks[:-1])
    # the writer kept appending at the start of the truncated file: no sparse hole
    assert pathlib.Path(path).read_bytes() == b"last\n"


def test_rotate_below_threshold_and_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "0.log"
    assert not rotate_if_needed(str(path), 10, 3)
    path.write_bytes(b"123456789")
    assert not rotate_if_needed(str(path), 10, 3)
    path.write_bytes(b"1234567890")
    assert rotate_if_needed(str(path), 10, 3)
    assert (tmp_path / "0.log.1").read_bytes() == b"1234567890"
    assert path.read_bytes() == b""


# ------------------------------------------------------------------ tail


def test_tail_across_chunks(tmp_path: pathlib.Path) -> None:
    old, new = tmp_path / "0.log.1", tmp_path / "0.log"
    old.write_bytes(b"a\nb\nc\n")
    new.write_bytes(b"d\ne\n")
    paths = [str(old), str(new)]
    assert tail(paths, 1) == b"e\n"
    assert tail(paths, 2) == b"d\ne\n"
    assert tail(paths, 3) == b"c\nd\ne\n"
    assert tail(paths, 99) == b"a\nb\nc\nd\ne\n"
    assert tail(paths, -1) == b"a\nb\nc\nd\ne\n"
    assert tail(paths, 0) == b""
    assert tail([], 5) == b""


def test_tail_counts_an_unterminated_last_line(tmp_path: pathlib.Path) -> None:
    old, new = tmp_path / "0.log.1", tmp_path / "0.log"
    old.write_bytes(b"a\nb")  # a line split across the rotation boundary
    new.write_bytes(b"c\nd")
    paths = [str(old), str(new)]
    assert tail(paths, 1) == b"d"
    assert tail(paths, 2) == b"bc\nd"
    data, offset = read_tail(paths, 1)
    assert (data, offset) == (b"d", 3)


# ------------------------------------------------------------------ follow


async def _next(stream: object) -> bytes:
    return await asyncio.wait_for(stream.__anext__(), timeout=5)  # type: ignore[attr-defined]


async def test_follow_reads_appends_and_survives_copytruncate(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "0.log")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    _write(fd, b"before\n")
    stream = follow(path, start_offset=len(b"before\n"), poll=0.01)
    try:
        _write(fd, b"first\n")
        assert await _next(stream) == b"first\n"
        _write(fd, b"unread tail\n")  # written, then rotated away before the follower looks
        assert rotate_if_needed(path, max_bytes=1, keep=3)
        _write(fd, b"after\n")
        got = await _next(stream)
        while got != b"unread tail\n" and len(got) < 100:
            got += await _next(stream)
        assert got == b"unread tail\n"
        assert await _next(stream) == b"after\n"
        # plain truncation (no new chunk) restarts at the top too
        os.truncate(path, 0)
        _write(fd, b"x\n")
        assert await _next(stream) == b"x\n"
    finally:
        os.close(fd)
        await stream.aclose()


async def test_follow_ends_when_the_file_is_removed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "0.log"
    path.write_bytes(b"")
    stream = follow(str(path), start_offset=0, poll=0.01)
    path.unlink()
    with pytest.raises(StopAsyncIteration):
        await _next(stream)


async def test_follow_stops_after_draining_once_the_process_restarted(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "3.log"
    path.write_bytes(b"a\n")
    assert not has_newer_instance(str(path))
    (tmp_path / "3.log.1").write_bytes(b"older chunk")
    (tmp_path / "10.log.1").write_bytes(b"not an instance file")
    assert not has_newer_instance(str(path))
    stream = follow(str(path), start_offset=0, poll=0.01, stop_when=lambda: True)
    with path.open("ab") as f:
        f.write(b"last words\n")
    assert await _next(stream) == b"a\nlast words\n"
    (tmp_path / "4.log").write_bytes(b"")
    assert has_newer_instance(str(path))
    with pytest.raises(StopAsyncIteration):
        await _next(stream)


# ------------------------------------------------------------------ selection


def _instance(root: pathlib.Path, pod_dir: str, process: str, name: str, data: bytes) -> str:
    directory = root / pod_dir / process
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(data)
    return str(directory / name)


def test_source_picks_current_and_previous_instance(tmp_path: pathlib.Path) -> None:
    _instance(tmp_path, "default_web_u1", "main", "0.log", b"zero")
    _instance(tmp_path, "default_web_u1", "main", "9.log", b"nine")
    chunk = _instance(tmp_path, "default_web_u1", "main", "10.log.1", b"ten-old")
    current = _instance(tmp_path, "default_web_u1", "main", "10.log", b"ten")
    source = DiskLogSource(str(tmp_path))
    assert source.instance_files("default", "web", None, previous=False) == [chunk, current]
    assert source.instance_files("default", "web", "main", previous=True) == [
        str(tmp_path / "default_web_u1" / "main" / "9.log")
    ]


def test_source_prefers_the_newest_pod_instance(tmp_path: pathlib.Path) -> None:
    _instance(tmp_path, "default_web_old", "main", "0.log", b"old")
    newer = _instance(tmp_path, "default_web_new", "main", "0.log", b"new")
    os.utime(tmp_path / "default_web_old", ns=(1_000_000_000, 1_000_000_000))
    os.utime(tmp_path / "default_web_new", ns=(2_000_000_000, 2_000_000_000))
    _instance(tmp_path, "default_web-2_x", "main", "0.log", b"other pod")
    source = DiskLogSource(str(tmp_path))
    assert source.instance_files("default", "web", None, previous=False) == [newer]


def test_source_errors_name_pod_and_processes(tmp_path: pathlib.Path) -> None:
    _instance(tmp_path, "default_two_u", "api", "0.log", b"")
    _instance(tmp_path, "default_two_u", "worker", "0.log", b"")
    _instance(tmp_path, "default_one_u", "main", "0.log", b"")
    source = DiskLogSource(str(tmp_path))
    with pytest.raises(ProcessRequired, match=r'"default/two" has 2 processes.*api, worker'):
        source.instance_files("default", "two", None, previous=False)
    with pytest.raises(LogNotFound, match=r'process "db" not found in pod "default/two"'):
        source.instance_files("default", "two", "db", previous=False)
    with pytest.raises(LogNotFound, match=r'no logs for pod "default/ghost"'):
        source.instance_files("default", "ghost", None, previous=False)
    with pytest.raises(LogNotFound, match=r'previous instance of process "main"'):
        source.instance_files("default", "one", None, previous=True)
    with pytest.raises(LogNotFound, match="no logs for pod"):
        DiskLogSource(str(tmp_path / "missing-root")).instance_files("a", "b", None, False)
