"""Pick the cgroup driver that matches how this host mounts cgroups.

* pure cgroup v2: ``<root>/cgroup.controllers`` exists -> V2Driver.
* cgroup v1, including systemd's hybrid mode (v1 controllers plus a
  controller-less v2 mount at ``<root>/unified``) -> V1Driver, because in
  hybrid mode the unified hierarchy cannot enforce any limit.

``prefer`` overrides the choice: "v2" also accepts a hybrid host's
``<root>/unified`` when cpu, memory and pids are all available there.
"""

from __future__ import annotations

import os

import structlog

from .base import CgroupDriver, CgroupError
from .v1 import V1Driver
from .v2 import CONTROLLERS, V2Driver

log = structlog.get_logger("nodeagent.cgroups")


def _controllers(directory: str) -> set[str] | None:
    try:
        with open(os.path.join(directory, "cgroup.controllers")) as f:
            return set(f.read().split())
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CgroupError(f"cannot read {directory}/cgroup.controllers: {e.strerror}") from e


def _v2(root: str, parent: str) -> V2Driver:
    offered = _controllers(root)
    if offered is not None:
        missing = [c for c in CONTROLLERS if c not in offered]
        if missing:
            log.warning("cgroup_v2_controllers_missing", root=root, missing=missing)
        return V2Driver(root, parent)
    unified = os.path.join(root, "unified")
    offered = _controllers(unified)
    if offered is None:
        raise CgroupError(f"cgroup v2 requested but {root}/cgroup.controllers does not exist")
    missing = [c for c in CONTROLLERS if c not in offered]
    if missing:
        raise CgroupError(
            f"cgroup v2 requested but this host runs hybrid cgroups: {unified} lacks "
            f"{', '.join(missing)} (bound to cgroup v1); use v1 or boot with "
            "systemd.unified_cgroup_hierarchy=1"
        )
    return V2Driver(unified, parent)


def detect(
    root: str = "/sys/fs/cgroup", parent: str = "mizzen", prefer: str | None = None
) -> CgroupDriver:
    """The driver for this host; CgroupError saying what was looked for when none is usable."""
    if prefer not in (None, "v1", "v2"):
        raise CgroupError(f"unknown cgroup version {prefer!r}: want 'v1' or 'v2'")
    if prefer == "v2" or (prefer is None and _controllers(root) is not None):
        driver: CgroupDriver = _v2(root, parent)
    elif prefer == "v1":
        driver = V1Driver(root, parent)
    else:
        try:
            driver = V1Driver(root, parent)
        except CgroupError as e:
            raise CgroupError(
                f"no usable cgroups under {root}: no {root}/cgroup.controllers (cgroup v2), and {e}"
            ) from e
    log.info("cgroup_driver_selected", version=driver.version, root=root, parent=parent)
    return driver
