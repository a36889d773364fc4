"""Hooks for `prefork serve --preload --hooks apps.upgrade_hooks`: make the old master's pool reap the
upgrade's new master, as its waitpid(-1) may by chance in orphan-reaping mode.

worker_exit runs inside the old master's reaping loop. When the file named by $PREFORK_TEST_KILL
holds the pid of one of this master's children, it SIGKILLs that child and waits, on a pidfd, until it
has exited: the loop's next waitpid(-1) then collects it, before the upgrade's own pidfd event is seen.
"""

import os
import select
import signal


def worker_exit(server, worker, status, reason):
    path = os.environ.get("PREFORK_TEST_KILL", "")
    try:
        with open(path) as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError):
        return
    if parent != os.getpid():                   # not our child (the new master reads this file too)
        return
    os.unlink(path)
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 10)      # readable: it has exited (a zombie until reaped)
    finally:
        os.close(pidfd)
