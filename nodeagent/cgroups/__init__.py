"""cgroup v1 and v2 drivers behind one small protocol (see base.py), and detection."""

from .base import Cgroup, CgroupDriver, CgroupError, Limits, Usage
from .cgroupfs import SysOps
from .detect import detect
from .v1 import V1Driver
from .v2 import V2Driver

__all__ = [
    "Cgroup",
    "CgroupDriver",
    "CgroupError",
    "Limits",
    "SysOps",
    "Usage",
    "V1Driver",
    "V2Driver",
    "detect",
]
