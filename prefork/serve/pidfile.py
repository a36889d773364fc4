"""Runs in the master of `prefork serve`: --pid FILE, the master's pid for init scripts and `kill`.

It is refused when it names a live prefork master (two masters would fight
over it), written atomically (a temporary file renamed over it), and removed
at exit only if it still names us. During an upgrade (SIGUSR2) the old master
moves it to FILE.oldbin and the new master writes FILE, as nginx and gunicorn
do; if the new master goes away, the old one moves it back.
"""

import os
import tempfile

from prefork.errors import BindError
from prefork.logs import open_regular

MASTER_TITLE = "prefork: master"
PID_BYTES = 32                   #: more than a pid and its newline ("4194304\n" at most on Linux)


class PidFile:
    def __init__(self, path):
        self.path = path
        self.oldbin = path + ".oldbin"

    def create(self):
        """Write our pid; BindError (exit 1) if the file names another live master or cannot be written."""
        other = read_pid(self.path)
        if other and other != os.getpid() and is_master(other):
            raise BindError(f"--pid {self.path} names a live prefork master (pid {other}); stop it first")
        try:
            # mkstemp: a new file (O_EXCL), so never written through a link someone planted; the
            # rename then replaces whatever entry FILE was, a link included, not what it points to.
            fd, temporary = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".",
                                             dir=os.path.dirname(os.path.abspath(self.path)))
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            raise BindError(f"cannot write --pid {self.path}: {exc.strerror}") from None

    def move_aside(self):
        """An upgrade begins: FILE becomes FILE.oldbin, for the new master to write FILE."""
        if read_pid(self.path) == os.getpid():
            os.replace(self.path, self.oldbin)

    def move_back(self):
        """The upgrade was rolled back: FILE names us again."""
        if read_pid(self.oldbin) == os.getpid():
            os.replace(self.oldbin, self.path)

    def remove(self):
        for path in (self.path, self.oldbin):
            if read_pid(path) == os.getpid():
                try:
                    os.unlink(path)
                except OSError:
                    pass


def read_pid(path):
    """The pid in path; 0 if it holds none. A FIFO or a device holds none: never blocks, never reads
    more than a pid's few bytes (the file is FILE of --pid, which anyone may have put there)."""
    try:
        with open(open_regular(path, os.O_RDONLY | os.O_CLOEXEC), "rb", buffering=0) as f:
            return int(f.read(PID_BYTES).strip() or 0)
    except (OSError, ValueError):
        return 0


def is_master(pid):
    """Whether pid is a live prefork master (by its process title)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").startswith(MASTER_TITLE.encode())
    except OSError:
        return False
