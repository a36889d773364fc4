"""prefork.cpus over fabricated cgroup trees (v2, v1, namespaces, bad files), and the policies' defaults from it."""

import dataclasses
import os

import pytest

from prefork import Adaptive, Prefork, policies
from prefork.cpus import cgroup_quota, usable_cpus

pytestmark = pytest.mark.timeout(30)

SERVICE = "0::/app.slice/web.service\n"
DOCKER = "4:cpu,cpuacct:/docker/abc\n"


def fabricate(tmp_path, proc_self_cgroup, files):
    """A cgroup mount under tmp_path/cgroup holding files ({path: text or bytes}); (root, proc_self_cgroup)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is IsADirectoryError:
            path.mkdir()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    proc = tmp_path / "proc-self-cgroup"
    if proc_self_cgroup is not None:
        proc.write_text(proc_self_cgroup)
    return str(root), str(proc)


def v1(directory, quota, period="100000"):
    return {f"{directory}/cpu.cfs_quota_us": quota + "\n", f"{directory}/cpu.cfs_period_us": period + "\n"}


QUOTAS = [
    # (what, /proc/self/cgroup, files under the mount, CPUs or None, the directory named in the source)
    ("v2: a quota of 2 CPUs", SERVICE, {"app.slice/web.service/cpu.max": "200000 100000\n"},
     2.0, "app.slice/web.service"),
    ("v2: max is no limit", SERVICE, {"app.slice/web.service/cpu.max": "max 100000\n"}, None, None),
    ("v2: a parent slice's smaller quota applies", SERVICE,
     {"app.slice/cpu.max": "100000 100000\n", "app.slice/web.service/cpu.max": "400000 100000\n"}, 1.0, "app.slice"),
    ("v2: the smaller of the two wins, whichever the level", SERVICE,
     {"app.slice/cpu.max": "max 100000\n", "app.slice/web.service/cpu.max": "300000 100000\n"},
     3.0, "app.slice/web.service"),
    ("v2: the walk reaches the mount point", SERVICE,
     {"cpu.max": "50000 100000\n", "app.slice/web.service/cpu.max": "max 100000\n"}, 0.5, ""),
    ("v2: fractional", SERVICE, {"app.slice/web.service/cpu.max": "150000 100000\n"},
     1.5, "app.slice/web.service"),
    ("v2: a cgroup namespace shows /", "0::/\n", {"cpu.max": "300000 100000\n"}, 3.0, ""),
    ("v2: a path not under the mount: the mount's own files", "0::/kubepods/pod1/abc\n",
     {"cpu.max": "200000 100000\n"}, 2.0, ""),
    ("v2: a path outside the namespace (..): the mount's own files", "0::/../../system.slice/x.service\n",
     {"cpu.max": "200000 100000\n"}, 2.0, ""),
    ("v1: cpu,cpuacct", DOCKER, v1("cpu,cpuacct/docker/abc", "150000"), 1.5, "cpu,cpuacct/docker/abc"),
    ("v1: -1 is no limit", DOCKER, v1("cpu,cpuacct/docker/abc", "-1"), None, None),
    ("v1: mounted as cpu", DOCKER, v1("cpu/docker/abc", "250000"), 2.5, "cpu/docker/abc"),
    ("v1: a parent's quota", DOCKER, {**v1("cpu,cpuacct/docker/abc", "-1"), **v1("cpu,cpuacct/docker", "100000")},
     1.0, "cpu,cpuacct/docker"),
    ("v1: the container's own mount", DOCKER, v1("cpu,cpuacct", "200000"), 2.0, "cpu,cpuacct"),
    ("v1: a cpu-only hierarchy", "3:cpu:/\n", v1("cpu", "50000", "200000"), 0.25, "cpu"),
    ("v1 and v2 both (hybrid): the smaller", "1:cpu:/\n0::/\n",
     {"cpu.max": "300000 100000\n", **v1("cpu", "200000")}, 2.0, "cpu"),
    ("no cpu controller in the line", "1:name=systemd:/\n2:memory:/\n", v1("cpu", "100000"), None, None),
    ("no cpu.max at all", SERVICE, {"app.slice/web.service/memory.max": "max\n"}, None, None),
    ("no /proc/self/cgroup", None, {"cpu.max": "100000 100000\n"}, None, None),
    ("a malformed line is not taken for v2's", "garbage\n", {"cpu.max": "100000 100000\n"}, None, None),
]

MALFORMED_CPU_MAX = ["banana", "", "200000", "200000 100000 7", "-5 100000", "0 100000", "200000 0", "2e5 100000",
                     "200000 max", " \n", b"\xff\xfe 100000", IsADirectoryError]


@pytest.mark.parametrize("proc_self_cgroup, files, cpus_expected, directory",
                         [case[1:] for case in QUOTAS], ids=[case[0] for case in QUOTAS])
def test_cgroup_quota(tmp_path, proc_self_cgroup, files, cpus_expected, directory):
    root, proc = fabricate(tmp_path, proc_self_cgroup, files)
    quota = cgroup_quota(root, proc)
    if cpus_expected is None:
        assert quota is None
    else:
        assert quota.cpus == cpus_expected
        assert quota.source.endswith(f" in {os.path.normpath(os.path.join(root, directory))}"), quota.source


@pytest.mark.parametrize("content", MALFORMED_CPU_MAX, ids=repr)
def test_a_malformed_cpu_max_is_no_quota(tmp_path, content):
    root, proc = fabricate(tmp_path, "0::/\n", {"cpu.max": content})
    assert cgroup_quota(root, proc) is None


@pytest.mark.parametrize("quota, period", [("abc", "100000"), ("100000", ""), ("100000", "-1"), ("", ""),
                                           ("1.5", "1")])
def test_malformed_v1_files_are_no_quota(tmp_path, quota, period):
    root, proc = fabricate(tmp_path, "3:cpu:/\n", v1("cpu", quota, period))
    assert cgroup_quota(root, proc) is None


def test_a_malformed_file_does_not_hide_a_good_one_above_it(tmp_path):
    root, proc = fabricate(tmp_path, SERVICE, {"app.slice/web.service/cpu.max": "banana\n",
                                               "app.slice/cpu.max": "100000 100000\n"})
    assert cgroup_quota(root, proc).cpus == 1.0


DECISIONS = [
    # (what, affinity, CPU count, cpu.max at the mount or None, (count, why))
    ("a quota below the CPUs", 64, 64, "200000 100000", (2, "the cgroup CPU quota of 2 CPUs, cpu.max 200000 100000")),
    ("a fractional quota, rounded up", 64, 64, "150000 100000",
     (2, "the cgroup CPU quota of 1.5 CPUs, cpu.max 150000 100000")),
    ("a quota below one CPU: still one", 64, 64, "20000 100000",
     (1, "the cgroup CPU quota of 0.2 CPUs, cpu.max 20000 100000")),
    ("a quota equal to the affinity: the quota is named", 4, 64, "400000 100000",
     (4, "the cgroup CPU quota of 4 CPUs, cpu.max 400000 100000")),
    ("an affinity below the quota", 2, 64, "800000 100000", (2, "CPU affinity, 2 of 64 CPUs")),
    ("an affinity and no quota", 4, 64, "max 100000", (4, "CPU affinity, 4 of 64 CPUs")),
    ("no limit at all", 8, 8, None, (8, "the machine's 8 CPUs")),
    ("one CPU", 1, 1, None, (1, "the machine's 1 CPU")),
]


@pytest.mark.parametrize("affinity, total, cpu_max, expected", [case[1:] for case in DECISIONS],
                         ids=[case[0] for case in DECISIONS])
def test_usable_cpus_is_the_tightest_limit(tmp_path, monkeypatch, affinity, total, cpu_max, expected):
    root, proc = fabricate(tmp_path, "0::/\n", {} if cpu_max is None else {"cpu.max": cpu_max + "\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: total)
    count, why = usable_cpus(root, proc)
    assert (count, why.split(" in ")[0]) == expected


def test_without_affinity_masks_the_cpu_count(tmp_path, monkeypatch):
    """macOS has no sched_getaffinity."""
    root, proc = fabricate(tmp_path, "0::/\n", {})
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus(root, proc) == (6, "the machine's 6 CPUs")


def test_this_machine_gives_an_answer():
    count, why = usable_cpus()
    assert 1 <= count <= (os.cpu_count() or 1) and why
    assert policies.cpu_count() == count


@pytest.fixture
def two_cpus_by_quota(monkeypatch):
    monkeypatch.setattr(policies, "usable_cpus", lambda: (2, "the cgroup CPU quota of 2 CPUs, cpu.max 200000 100000"))


def test_a_defaulted_prefork_size_says_which_limit_set_it(two_cpus_by_quota):
    policy = Prefork()
    assert policy.workers == 2
    assert policy.sized_by == "one per CPU: the cgroup CPU quota of 2 CPUs, cpu.max 200000 100000"
    assert Prefork(workers=None).sized_by == policy.sized_by        # None is the default, as in `prefork serve`
    assert policy == Prefork(workers=2) and "sized_by" not in repr(policy)


def test_a_given_size_says_nothing(two_cpus_by_quota):
    assert Prefork(workers=3).sized_by == "" and Adaptive(max_workers=3).sized_by == ""
    assert dataclasses.replace(Prefork(), workers=5).sized_by == ""     # as a reload with -w 5 does


def test_a_defaulted_adaptive_maximum_says_which_limit_set_it(two_cpus_by_quota):
    policy = Adaptive()
    assert (policy.max_workers, policy.workers) == (8, 1)
    assert policy.sized_by == "at most 8, 4 per CPU: the cgroup CPU quota of 2 CPUs, cpu.max 200000 100000"


def test_the_adaptive_default_stays_within_max_workers(monkeypatch):
    monkeypatch.setattr(policies, "usable_cpus", lambda: (2000, "the machine's 2000 CPUs"))
    assert Adaptive().max_workers == policies.MAX_WORKERS

