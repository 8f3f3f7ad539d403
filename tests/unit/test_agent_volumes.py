"""Volume files on disk: mount paths, mount symlinks, the atomic writer, the secrets tmpfs."""

from __future__ import annotations

import os
import signal
import stat
import threading
from pathlib import Path

import pytest

from nodeagent.config_inject import ConfigError, FileSpec
from nodeagent.pod_config import PodPaths, reload_signal
from nodeagent.tmpfs import mount_fstype
from nodeagent.volumes import DATA_LINK, AtomicWriter, check_mounts, ensure_link, mount_target

POD = "/data/poddirs/default_web_u1"

# ------------------------------------------------------------------ mount paths


@pytest.mark.parametrize(
    ("working_dir", "mount_path", "expected"),
    [
        ("", "conf", f"{POD}/conf"),
        ("/srv/app", "conf", f"{POD}/conf"),  # working dir outside the pod dir
        (f"{POD}/app", "conf", f"{POD}/app/conf"),  # inside: relative to it
        (POD, "a/b", f"{POD}/a/b"),
        ("", f"{POD}/etc/conf", f"{POD}/etc/conf"),
        ("", "./x/../conf", f"{POD}/conf"),
    ],
)
def test_mount_paths_resolve_inside_the_pod_dir(
    working_dir: str, mount_path: str, expected: str
) -> None:
    assert mount_target(POD, working_dir, mount_path) == expected


@pytest.mark.parametrize(
    ("working_dir", "mount_path"),
    [
        ("", "/etc"),
        ("", "../other_pod/conf"),
        (f"{POD}/app", "../../x"),
        ("", "."),
        ("", POD),
        ("", f"{POD}/../x"),
        ("", ""),
        ("", "a\0b"),
    ],
)
def test_mount_paths_outside_the_pod_dir_are_refused(working_dir: str, mount_path: str) -> None:
    with pytest.raises(ConfigError, match="mountPath"):
        mount_target(POD, working_dir, mount_path)


def test_overlapping_mounts_of_one_process_are_refused() -> None:
    check_mounts({"a": f"{POD}/a", "b": f"{POD}/a-b", "c": f"{POD}/b"})
    with pytest.raises(ConfigError, match="overlap"):
        check_mounts({"a": f"{POD}/a", "b": f"{POD}/a-b", "c": f"{POD}/a/c"})
    with pytest.raises(ConfigError, match="overlap"):
        check_mounts({"a": f"{POD}/x", "b": f"{POD}/x"})


# ------------------------------------------------------------------ mount links


def test_ensure_link_creates_directories_and_the_symlink_once(tmp_path: Path) -> None:
    pod, volume = tmp_path / "pod", tmp_path / "vol"
    pod.mkdir()
    volume.mkdir()
    target = str(pod / "etc" / "app" / "conf")
    ensure_link(str(pod), target, str(volume))
    assert os.readlink(target) == str(volume)
    assert stat.S_IMODE((pod / "etc").stat().st_mode) == 0o755
    ensure_link(str(pod), target, str(volume))  # again: fine
    with pytest.raises(ConfigError, match="another volume"):
        ensure_link(str(pod), target, str(tmp_path / "other"))


def test_ensure_link_refuses_something_else_at_the_path(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    (pod / "conf").mkdir(parents=True)
    with pytest.raises(ConfigError, match="something else"):
        ensure_link(str(pod), str(pod / "conf"), str(tmp_path / "vol"))


def test_a_planted_symlink_on_the_way_is_not_followed(tmp_path: Path) -> None:
    pod, outside = tmp_path / "pod", tmp_path / "outside"
    pod.mkdir()
    outside.mkdir()
    (pod / "etc").symlink_to(outside)
    with pytest.raises(ConfigError, match='"etc" is not a directory'):
        ensure_link(str(pod), str(pod / "etc" / "conf"), str(tmp_path / "vol"))
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------ the writer


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def writer(path: Path, clock: Clock | None = None) -> AtomicWriter:
    return AtomicWriter(
        str(path), uid=os.getuid(), gid=os.getgid(), dir_mode=0o755, clock=clock or Clock()
    )


def generations(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name.startswith("..2"))


def test_the_kubelet_layout_with_a_fake_clock(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    clock = Clock()
    w = writer(vol, clock)
    assert w.write({"a.conf": FileSpec(b"one", 0o644), "dir/b": FileSpec(b"two", 0o600)})
    (gen,) = generations(vol)
    assert gen.startswith("..2027_01_15_08_00_00.")  # from the clock, UTC
    assert os.readlink(vol / DATA_LINK) == gen
    assert os.readlink(vol / "a.conf") == f"{DATA_LINK}/a.conf"
    assert os.readlink(vol / "dir") == f"{DATA_LINK}/dir"
    assert (vol / "a.conf").read_bytes() == b"one"
    assert (vol / "dir" / "b").read_bytes() == b"two"
    assert stat.S_IMODE((vol / gen / "dir" / "b").stat().st_mode) == 0o600
    assert stat.S_IMODE((vol / gen / "a.conf").stat().st_mode) == 0o644
    assert stat.S_IMODE(vol.stat().st_mode) == 0o755


def test_an_unchanged_payload_touches_nothing(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    w = writer(vol)
    payload = {"a": FileSpec(b"1", 0o644)}
    assert w.write(payload)
    before = generations(vol)
    assert not w.write(dict(payload))
    assert generations(vol) == before
    assert w.write({"a": FileSpec(b"1", 0o600)})  # a mode change is a change
    assert generations(vol) != before


def test_an_update_swaps_generations_and_removes_what_is_gone(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    clock = Clock()
    w = writer(vol, clock)
    w.write({"a": FileSpec(b"1", 0o644), "b": FileSpec(b"1", 0o644)})
    (old,) = generations(vol)
    clock.now += 61
    w.write({"a": FileSpec(b"2", 0o644), "c": FileSpec(b"3", 0o644)})
    (new,) = generations(vol)
    assert new != old and new.startswith("..2027_01_15_08_01_01.")
    assert (vol / "a").read_bytes() == b"2"
    assert (vol / "c").read_bytes() == b"3"
    assert not os.path.lexists(vol / "b")
    assert sorted(p.name for p in vol.iterdir()) == sorted([DATA_LINK, new, "a", "c"])


def test_a_generation_left_by_a_crash_is_removed(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    w = writer(vol)
    w.write({"a": FileSpec(b"1", 0o644)})
    (vol / "..2020_01_01_00_00_00.dead").mkdir()
    (vol / "..data_tmp").symlink_to("nowhere")
    w.write({"a": FileSpec(b"2", 0o644)})
    assert len(generations(vol)) == 1
    assert not os.path.lexists(vol / "..data_tmp")


def test_readers_never_see_a_half_written_generation(tmp_path: Path) -> None:
    """Through ..data, the files of one generation always agree with each other."""
    vol = tmp_path / "vol"
    w = writer(vol)
    w.write({"a": FileSpec(b"0", 0o644), "b": FileSpec(b"0", 0o644)})
    stop = threading.Event()
    seen: list[tuple[bytes, bytes]] = []

    def read() -> None:
        while not stop.is_set():
            gen = os.readlink(vol / DATA_LINK)
            try:
                a = (vol / gen / "a").read_bytes()
                b = (vol / gen / "b").read_bytes()
            except FileNotFoundError:
                continue  # that generation was replaced and removed meanwhile
            seen.append((a, b))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 200):
            v = str(i).encode()
            w.write({"a": FileSpec(v, 0o644), "b": FileSpec(v, 0o644)})
    finally:
        stop.set()
        reader.join()
    assert seen and all(a == b for a, b in seen)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
def test_files_belong_to_the_owner_and_directories_to_the_agent(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    w = AtomicWriter(str(vol), uid=65534, gid=65533, dir_mode=0o750)
    w.write({"pw": FileSpec(b"p", 0o400)})
    st = (vol / "pw").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65533, 0o400)
    dst = vol.stat()
    assert (dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode)) == (0, 65533, 0o750)
    assert not w.write({"pw": FileSpec(b"p", 0o400)})


# ------------------------------------------------------------- tmpfs, signals


def test_mount_fstype_reads_mountinfo_with_escapes(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        "46 22 0:40 / /var/lib/my\\040agent/secrets rw,relatime - tmpfs mizzen-secrets rw\n"
        "47 22 0:41 / /srv/x rw shared:1 - xfs /dev/vdb rw\n"
    )
    assert mount_fstype("/var/lib/my agent/secrets", str(info)) == "tmpfs"
    assert mount_fstype("/srv/x", str(info)) == "xfs"
    assert mount_fstype("/srv", str(info)) is None


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        ("signal:SIGHUP", signal.SIGHUP),
        ("signal:HUP", signal.SIGHUP),
        ("signal: sigusr1", signal.SIGUSR1),
        ("signal:NOPE", None),
        ("restart", None),
        ("", None),
    ],
)
def test_reload_annotation(annotation: str, expected: signal.Signals | None) -> None:
    assert reload_signal(annotation) == expected


def test_pod_files_of_pods_without_a_worker_are_removed(tmp_path: Path) -> None:
    paths = PodPaths.under(str(tmp_path))
    for uid in ("keep", "gone"):
        Path(paths.pod_dir("ns", "web", uid), "conf").mkdir(parents=True)
        Path(paths.volumes, uid, "conf.0").mkdir(parents=True)
        Path(paths.secrets.path, uid, "creds.0").mkdir(parents=True)
    assert paths.remove_orphans({"keep"}) == ["gone"]
    assert sorted(os.listdir(paths.pod_dirs)) == ["ns_web_keep"]
    assert os.listdir(paths.volumes) == ["keep"]
    assert os.listdir(paths.secrets.path) == ["keep"]
    paths.remove_pod("ns", "web", "keep")
    assert os.listdir(paths.pod_dirs) == os.listdir(paths.volumes) == []
