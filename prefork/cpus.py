"""Runs in the serving process (when a pool size is defaulted): how many CPUs this process may really use.

One worker per CPU is only right if the CPUs are really there. A container
limited to 2 CPUs on a 64-core host sees 64 in os.cpu_count(), and even in
its affinity mask; the limit is the cgroup CPU quota, which the kernel
enforces by throttling. Forking 64 workers there wastes memory and invites
the out-of-memory killer (gunicorn #2028). So the count is the smallest of
the CPU count, the affinity mask (taskset, cpusets) and the cgroup quota,
rounded up (1.5 CPUs of quota keep two workers busy part of the time).

The quota is read for this process's own cgroup, and for each parent up to
the mount point, because a limit on a parent slice applies too:

    cgroup v2   /proc/self/cgroup "0::/PATH"        ROOT/PATH/cpu.max: "QUOTA PERIOD" or "max PERIOD"
    cgroup v1   "N:cpu,cpuacct:/PATH"               ROOT/cpu,cpuacct/PATH (or ROOT/cpu/PATH):
                                                    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us

Inside a container the PATH may not exist under the mount (a cgroup namespace
shows "/", an older runtime mounts only the container's own cgroup): then the
mount point's own files are the container's. A file that is missing,
unreadable or malformed gives no quota; nothing here raises.
"""

import math
import os
from typing import Iterator, List, NamedTuple, Optional, Tuple


class Quota(NamedTuple):
    """A cgroup CPU quota: how many CPUs' worth of time, and where it was read (for the log)."""

    cpus: float
    source: str     #: e.g. "cpu.max 150000 100000 in /sys/fs/cgroup/system.slice"


def usable_cpus(root: str = "/sys/fs/cgroup", proc_self_cgroup: str = "/proc/self/cgroup") -> Tuple[int, str]:
    """How many CPUs this process may use, and which limit decided it, as a phrase for the log."""
    total = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:          # no affinity masks on this platform (macOS)
        allowed = total
    quota = cgroup_quota(root, proc_self_cgroup)
    if quota is not None and math.ceil(quota.cpus) <= allowed:
        return math.ceil(quota.cpus), f"the cgroup CPU quota of {_cpus(quota.cpus)}, {quota.source}"
    if allowed < total:
        return allowed, f"CPU affinity, {allowed} of {_cpus(total)}"
    return allowed, f"the machine's {_cpus(total)}"


def cgroup_quota(root: str = "/sys/fs/cgroup", proc_self_cgroup: str = "/proc/self/cgroup") -> Optional[Quota]:
    """The smallest CPU quota on this process's cgroup or its parents, v2 or v1; None if there is none."""
    quotas: List[Quota] = []
    for line in (_read(proc_self_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if not controllers:                                     # v2: one hierarchy, all controllers
            quotas += filter(None, map(_cpu_max, _upwards(root, path)))
        elif "cpu" in controllers.split(","):                   # v1: the cpu controller's hierarchy
            for mount in dict.fromkeys((controllers, "cpu")):
                quotas += filter(None, map(_cfs_quota, _upwards(os.path.join(root, mount), path)))
    return min(quotas, default=None)


def _upwards(mount: str, path: str) -> Iterator[str]:
    """The cgroup's directory, then each parent up to the mount point. A path missing under the
    mount (a container's own mount) ends there all the same; one outside it ("/../x") is not walked."""
    mount = os.path.normpath(mount)
    directory = os.path.normpath(os.path.join(mount, path.lstrip("/")))
    if os.path.commonpath([mount, directory]) != mount:
        directory = mount
    while directory != mount:
        yield directory
        directory = os.path.dirname(directory)
    yield mount


def _cpu_max(directory: str) -> Optional[Quota]:
    """cgroup v2: cpu.max holds "QUOTA PERIOD" in microseconds, or "max PERIOD" for no limit."""
    text = _read(os.path.join(directory, "cpu.max"))
    fields = (text or "").split()
    if len(fields) != 2:
        return None
    cpus = _ratio(*fields)
    return None if cpus is None else Quota(cpus, f"cpu.max {' '.join(fields)} in {directory}")


def _cfs_quota(directory: str) -> Optional[Quota]:
    """cgroup v1: cpu.cfs_quota_us (-1 for no limit) over cpu.cfs_period_us."""
    quota = (_read(os.path.join(directory, "cpu.cfs_quota_us")) or "").strip()
    period = (_read(os.path.join(directory, "cpu.cfs_period_us")) or "").strip()
    cpus = _ratio(quota, period)
    source = f"cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period} in {directory}"
    return None if cpus is None else Quota(cpus, source)


def _ratio(quota: str, period: str) -> Optional[float]:
    """quota / period when both are positive whole numbers; None for "max", -1 or anything malformed."""
    if not (quota.isdigit() and period.isdigit()) or int(quota) == 0 or int(period) == 0:
        return None
    return int(quota) / int(period)


def _cpus(count: float) -> str:
    return f"{count:g} CPU" + ("" if count == 1 else "s")


def _read(path: str) -> Optional[str]:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):     # missing, unreadable, or not text
        return None
