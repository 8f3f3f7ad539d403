"""detect(): which driver a host's cgroup mounts call for, and what `prefer` may override."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.cgroups import CgroupError, V1Driver, V2Driver, detect


def unified(d: Path, controllers: str) -> None:
    d.mkdir(exist_ok=True)
    (d / "cgroup.controllers").write_text(controllers + "\n")
    (d / "cgroup.procs").write_text("1\n")


def v1(
    root: Path, names: tuple[str, ...] = ("cpu", "cpuacct", "memory", "pids", "freezer")
) -> None:
    for name in names:
        (root / name).mkdir()
        (root / name / "cgroup.procs").write_text("1\n")


def test_pure_v2(tmp_path: Path) -> None:
    unified(tmp_path, "cpuset cpu io memory pids")
    driver = detect(str(tmp_path), "pods")
    assert isinstance(driver, V2Driver)
    assert (driver.version, driver.root, driver.base) == ("v2", str(tmp_path), f"{tmp_path}/pods")


def test_pure_v1(tmp_path: Path) -> None:
    v1(tmp_path)
    driver = detect(str(tmp_path))
    assert isinstance(driver, V1Driver) and driver.version == "v1"
    assert driver.parent == "mizzen"


def test_v1_with_comounted_cpu_cpuacct(tmp_path: Path) -> None:
    v1(tmp_path, ("cpu,cpuacct", "memory", "pids"))
    driver = detect(str(tmp_path))
    assert isinstance(driver, V1Driver) and not driver.has_freezer
    assert driver.hierarchies["cpuacct"] == str(tmp_path / "cpu,cpuacct")


def test_hybrid_picks_v1(tmp_path: Path) -> None:
    v1(tmp_path)
    unified(tmp_path / "unified", "")
    assert isinstance(detect(str(tmp_path)), V1Driver)


def test_prefer_v2_on_hybrid_without_controllers_explains(tmp_path: Path) -> None:
    v1(tmp_path)
    unified(tmp_path / "unified", "hugetlb")
    with pytest.raises(CgroupError, match=r"hybrid cgroups: .*unified lacks cpu, memory, pids"):
        detect(str(tmp_path), prefer="v2")


def test_prefer_v2_uses_unified_mount_that_has_the_controllers(tmp_path: Path) -> None:
    v1(tmp_path, ("cpuset", "freezer"))
    unified(tmp_path / "unified", "cpu memory pids")
    driver = detect(str(tmp_path), prefer="v2")
    assert isinstance(driver, V2Driver) and driver.root == str(tmp_path / "unified")


def test_prefer_v1_on_pure_v2_names_missing_hierarchies(tmp_path: Path) -> None:
    unified(tmp_path, "cpu memory pids")
    with pytest.raises(CgroupError, match=r"hierarchies cpu, cpuacct, memory, pids not mounted"):
        detect(str(tmp_path), prefer="v1")


def test_prefer_v2_without_any_v2(tmp_path: Path) -> None:
    v1(tmp_path)
    with pytest.raises(CgroupError, match=r"cgroup v2 requested but .*cgroup\.controllers"):
        detect(str(tmp_path), prefer="v2")


def test_neither_is_a_clear_error(tmp_path: Path) -> None:
    v1(tmp_path, ("cpu", "memory"))
    with pytest.raises(
        CgroupError, match=r"no usable cgroups under .*cgroup\.controllers.*cpuacct"
    ):
        detect(str(tmp_path))


def test_empty_dirs_are_not_hierarchies(tmp_path: Path) -> None:
    for name in ("cpu", "cpuacct", "memory", "pids"):
        (tmp_path / name).mkdir()
    with pytest.raises(CgroupError, match="no usable cgroups"):
        detect(str(tmp_path))


def test_unknown_preference(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match="unknown cgroup version 'v3'"):
        detect(str(tmp_path), prefer="v3")
