"""The pid file: refused when it names a live master, never written through a planted link, never
waited on or read without end when it is no regular file."""

import os
import resource
import subprocess
import sys

import pytest

from prefork.errors import BindError
from prefork.serve.pidfile import PidFile, read_pid


class RaceWinner:
    """An attacker who wins the race for the temporary file: through an audit hook (run just before
    every open), a link to victim appears at the first new name opened in directory, whatever that
    name is and however it was chosen, the moment before the open. An audit hook stays for the life
    of the process, so it acts only while armed (in a with block)."""

    armed = None
    installed = False

    def __init__(self, directory, victim):
        self.directory, self.victim, self.planted = str(directory), victim, None
        if not RaceWinner.installed:
            sys.addaudithook(RaceWinner._hook)
            RaceWinner.installed = True

    def __enter__(self):
        RaceWinner.armed = self
        return self

    def __exit__(self, *exc):
        RaceWinner.armed = None

    @staticmethod
    def _hook(event, args):
        self = RaceWinner.armed
        if event != "open" or self is None or not isinstance(args[0], (str, bytes, os.PathLike)):
            return                                    # not armed, or an open of a descriptor
        path = os.path.abspath(os.fsdecode(args[0]))
        if os.path.dirname(path) == self.directory and not os.path.lexists(path):
            RaceWinner.armed = None                   # once: mkstemp's next name must be free
            os.symlink(self.victim, path)
            self.planted = path


def test_links_planted_at_the_file_and_at_its_temporary_are_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    path = tmp_path / "app.pid"
    os.symlink(victim, path)                                       # at the file itself
    with RaceWinner(tmp_path, victim) as attacker:                 # at its temporary, just before it opens
        PidFile(str(path)).create()
    assert victim.read_text() == "root's secret\n"
    assert attacker.planted, "no new file was opened beside the pid file: nowhere to plant a link"
    assert not path.is_symlink() and read_pid(path) == os.getpid()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_a_file_naming_a_live_master_is_refused_and_a_stale_one_replaced(tmp_path):
    path = tmp_path / "app.pid"
    path.write_text("1\n")                                         # pid 1 is not a prefork master here
    PidFile(str(path)).create()
    assert read_pid(path) == os.getpid()
    import setproctitle
    old = setproctitle.getproctitle()
    setproctitle.setproctitle("prefork: master [test]")
    try:
        path.write_text(f"{os.getppid()}\n")
        PidFile(str(path)).create()                                # the parent is no master: replaced
        assert read_pid(path) == os.getpid()
        other = tmp_path / "other.pid"
        other.write_text(f"{os.getpid()}\n")
        with pytest.raises(BindError, match="names a live prefork master"):
            pidfile = PidFile(str(other))
            pidfile.path, own = str(other), os.getpid
            os.getpid = lambda: own() + 1                           # as another process would see us
            try:
                pidfile.create()
            finally:
                os.getpid = own
    finally:
        setproctitle.setproctitle(old)


def test_an_upgrade_moves_it_aside_and_back(tmp_path):
    pidfile = PidFile(str(tmp_path / "app.pid"))
    pidfile.create()
    pidfile.move_aside()
    assert not os.path.exists(pidfile.path) and read_pid(pidfile.oldbin) == os.getpid()
    pidfile.move_back()
    assert read_pid(pidfile.path) == os.getpid() and not os.path.exists(pidfile.oldbin)
    pidfile.remove()
    assert not os.path.exists(pidfile.path)


def read_pid_in_a_child(path):
    """read_pid(path) in a child with 10 s and 256 MiB of address space: a read that blocks or never
    ends fails the test, instead of hanging it or eating the machine's memory."""
    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))
    code = f"from prefork.serve.pidfile import read_pid; print(read_pid({str(path)!r}))"
    try:
        child = subprocess.run([sys.executable, "-c", code], preexec_fn=cap_memory, capture_output=True,
                               text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"read_pid({str(path)!r}) still blocked after 10 s") from None
    assert child.returncode == 0, child.stderr
    return int(child.stdout)


def huge_file(path):
    with open(path, "w") as f:
        f.truncate(4 << 30)                                        # sparse: 4 GiB of zeros on no disk


@pytest.mark.parametrize("make", [
    os.mkfifo,                                                     # open() waits for a writer
    lambda path: os.symlink("/dev/zero", path),                    # read() never ends
    huge_file,                                                     # regular, but no pid file
], ids=["fifo", "link to /dev/zero", "huge regular file"])
def test_a_pid_file_that_holds_no_pid_names_no_master_at_once_and_is_replaced(tmp_path, make):
    path = tmp_path / "app.pid"
    make(str(path))
    assert read_pid_in_a_child(path) == 0
    pidfile = PidFile(str(path))
    pidfile.create()
    assert path.is_file() and not path.is_symlink() and read_pid(path) == os.getpid()
    pidfile.remove()
    assert not path.exists()
