"""--user and --group: resolving them, and what a child that cannot drop to them says."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from prefork.errors import ConfigError
from prefork.serve.privileges import Credentials, resolve

DROP = ("from prefork.serve.privileges import Credentials\n"
        "Credentials('nobody', 65534, 65534, (65534,)).drop()\n")


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_a_drop_the_kernel_refuses_names_user_and_the_missing_capability():
    proc = subprocess.run(["setpriv", "--bounding-set", "-setuid,-setgid", "--", sys.executable, "-c", DROP],
                          cwd=REPO, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "prefork.errors.PreforkError: cannot drop privileges to --user nobody (uid 65534, gid 65534): "
        "Operation not permitted (the process lacks CAP_SETUID or CAP_SETGID)")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_child_that_already_runs_as_the_user_drops_nothing_and_does_not_fail():
    """A worker forked by a zygote that dropped already: setgroups() would fail, so nothing is called."""
    proc = subprocess.run([sys.executable, "-c", DROP + DROP + "import os; print(os.getuid(), os.getgid())"],
                          cwd=REPO, capture_output=True, text=True, timeout=20)
    assert (proc.returncode, proc.stdout) == (0, "65534 65534\n"), proc.stderr


def test_user_needs_a_root_master():
    """Checked in a forked child that gave up root: no new interpreter has to start as that user."""
    if os.geteuid() != 0:
        with pytest.raises(ConfigError, match="need the master to run as root"):
            resolve("nobody", "")
        return
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                        # the child: no longer root, then ask
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            try:
                resolve("nobody", "")
                answer = "resolved"
            except ConfigError as exc:
                answer = str(exc)
            os.write(write, answer.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    assert answer.startswith("--user and --group need the master to run as root"), answer


def test_no_user_and_no_group_is_no_credentials():
    assert resolve("", "") is None
    assert Credentials("x", os.getuid(), os.getgid(), tuple(os.getgroups())).held() == (
        os.getuid() == os.geteuid() and os.getgid() == os.getegid())
