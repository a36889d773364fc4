"""Runs in the master of `prefork serve`: upgrade in place (SIGUSR2), a new master on the same sockets.

The old master runs the `prefork` command it was started with again, as a
child, passing it the listening sockets, the control socket and the metrics
socket as inherited file descriptors named in the environment (PREFORK_FDS,
PREFORK_CONTROL_FD, PREFORK_METRICS_FD),
never binding anything twice, so not one connection is refused in between.
PREFORK_SYSTEMD_FDS says which of them systemd passed the first master, with
their names (FD=NAME, joined by ":" as in LISTEN_FDNAMES, whose names have
no ":"): the new master treats them as activated, as that master did (it
binds no -b default beside them, and never removes their files).
Both pools accept on the same sockets until the operator stops the old master
(SIGTERM), exactly as with nginx and gunicorn. The pid file moves to
FILE.oldbin for the old master and FILE names the new one.

The new master tells the old one that its workers are ready through a pipe
(PREFORK_UPGRADE_FD); the old master then leaves the control and metrics
sockets to it (the answering services). If the new master exits instead (it
failed, or the operator stopped it to roll back), the old master takes the
pid file and those sockets back. When
the old master exits after a successful upgrade it leaves the socket files in
place: they belong to the new master now.

Each master follows the other by a pidfd, never by its pid, which may be
another process's once the first is gone. The new master opens one on its
parent, the old master named by PREFORK_PREDECESSOR, if that is still its
parent (one that died is replaced by a reaper). When the old master reaps
every child itself (--preload, PID 1), the pool may collect the new master's
exit first: it hands over the status (Upgrader.claim), so the roll-back still
says how the new master ended.
"""

import logging
import os
import selectors
import socket
import subprocess
import sys
from typing import NamedTuple

from prefork.errors import PreforkError
from prefork.pool.service import Service
from prefork.signals import exit_text, wait_readable

log = logging.getLogger("prefork")

FDS_VARIABLE, CONTROL_VARIABLE, READY_VARIABLE = "PREFORK_FDS", "PREFORK_CONTROL_FD", "PREFORK_UPGRADE_FD"
METRICS_VARIABLE = "PREFORK_METRICS_FD"
SYSTEMD_VARIABLE, PREDECESSOR_VARIABLE = "PREFORK_SYSTEMD_FDS", "PREFORK_PREDECESSOR"


# -- the new master's side ------------------------------------------------------------------

class Inherited(NamedTuple):
    """What an old master passed us (all empty or None when we are the first master)."""

    listeners: list           #: sockets of the old master's own binds, for -b to take back
    activated: list           #: [(socket, name)] systemd passed the first master, as systemd.listen_fds()
    control: object           #: the control socket, or None
    metrics: object           #: the metrics socket (--metrics), or None
    ready: object             #: the fd to say "ready" on, or None
    predecessor: object       #: the old master's pid, or None (none, or one that did not say)


def inherited(environ=None):
    """The sockets and fds an old master passed us, as an Inherited."""
    environ = os.environ if environ is None else environ
    listeners = {int(fd): socket.socket(fileno=int(fd)) for fd in environ.pop(FDS_VARIABLE, "").split(",") if fd}
    for sock in listeners.values():
        os.set_inheritable(sock.fileno(), False)
    activated = []
    for entry in environ.pop(SYSTEMD_VARIABLE, "").split(":"):
        if entry:
            fd, _, name = entry.partition("=")
            activated.append((listeners.pop(int(fd)), name))
    control, metrics = (environ.pop(name, "") for name in (CONTROL_VARIABLE, METRICS_VARIABLE))
    ready = environ.pop(READY_VARIABLE, "")
    predecessor = environ.pop(PREDECESSOR_VARIABLE, "")
    return Inherited(list(listeners.values()), activated, socket.socket(fileno=int(control)) if control else None,
                     socket.socket(fileno=int(metrics)) if metrics else None,
                     int(ready) if ready else None, int(predecessor) if predecessor else None)


class Successor(Service):
    """A new master's service: once our pool is ready, takes over the control socket and tells the
    old master; should we exit while the old master still runs (a roll-back), leaves it everything.

    Until then `prefork ctl` keeps talking to the old master, so that an answer from the new one
    means its workers are ready (a script may then stop the old one)."""

    def __init__(self, fd, servers, control=None, predecessor=None, metrics=None):
        """predecessor: the old master's pid, as it said (an older one does not: then our parent's)."""
        self.fd, self.servers = fd, servers
        self.answering = [service for service in (control, metrics) if service is not None]
        self.predecessor = predecessor or os.getppid()       # for messages: we follow it by _pidfd
        self._pidfd = open_parent_pidfd(self.predecessor)
        self._predecessor_runs = self._pidfd is not None

    @property
    def other_master_serves(self):
        """The old master still runs: if we stop now, it is a roll-back and it serves on.

        Asked of its pidfd (readable: it exited), never of its pid, which may be another process's
        once it is gone. After close(), the answer close() had."""
        if self._pidfd is not None and wait_readable(self._pidfd, 0):
            self._predecessor_runs = False
            self._close_pidfd()
        return self._predecessor_runs

    def start(self, selector):
        pass

    def on_event(self, master, fileobj, mask):
        pass

    def on_pass(self, master, now):
        if self.fd is not None and master.settled():
            for service in self.answering:
                service.resume()
            try:
                os.write(self.fd, b"ready\n")
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return None

    def close(self, in_child=False):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if not in_child and self.other_master_serves:
            release_files(self.servers, self.answering)
        self._close_pidfd()

    def _close_pidfd(self):
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def open_parent_pidfd(pid):
    """A pidfd on our parent, pid; None if pid is no longer our parent (it died, and a reaper took us).

    getppid() before and after: the pid of a parent that died may be another process's by the time
    we open it, but while getppid() says pid, pid is our parent, alive."""
    if os.getppid() != pid:
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if os.getppid() != pid:
        os.close(pidfd)
        return None
    return pidfd


# -- the old master's side ------------------------------------------------------------------

class Upgrader(Service):
    """An old master's service: starts the new master on SIGUSR2 and follows it.

    activated: [(socket, name)], those of the servers' sockets that came from systemd."""

    def __init__(self, servers, control=None, pidfile=None, cwd=None, activated=(), metrics=None):
        self.servers, self.pidfile, self.activated = servers, pidfile, list(activated)
        self.answering = [(name, service) for name, service in ((CONTROL_VARIABLE, control), (METRICS_VARIABLE, metrics))
                          if service is not None]
        self.cwd = cwd or os.getcwd()
        self.new_master = None             # its pid, until we have seen it exit; we follow it by _pidfd
        self.handed_over = False           # its workers are ready: it answers the control socket
        self._pidfd = self._ready = self._selector = None
        self._reaped = None                # its wait status, when the pool's waitpid(-1) took it (claim)

    def start(self, selector):
        self._selector = selector

    @property
    def other_master_serves(self):
        """The new master runs (ready or still booting): were we stopped, the service goes on in it,
        on the sockets we share, so we must leave them (and their files) as they are."""
        return self._pidfd is not None and not wait_readable(self._pidfd, 0)     # readable: it exited

    @property
    def main_is_elsewhere(self):
        """The new master's workers are ready: it is the service's main process now."""
        return self.handed_over and self.other_master_serves

    def status(self):
        return {"upgrade": {"new_master": self.new_master, "ready": self.handed_over}} if self.new_master else {}

    def begin(self, master):
        """Start the new master; a text for the log and `prefork ctl upgrade`."""
        if self.new_master is not None:
            raise PreforkError(f"an upgrade is already under way (new master pid {self.new_master}): "
                               f"stop this master (SIGTERM) to finish it, or the new one to roll back")
        predecessor = next((s.predecessor for s in master.services
                            if isinstance(s, Successor) and s.other_master_serves), None)
        if predecessor is not None:
            raise PreforkError(f"the master this one replaced (pid {predecessor}) still runs: stop it (SIGTERM) "
                               f"to finish that upgrade before starting another")
        if master.stopping:
            raise PreforkError("the master is stopping")
        read_end, write_end = os.pipe()
        listeners = [server.socket.fileno() for server in self.servers]
        env = dict(os.environ, **{FDS_VARIABLE: ",".join(map(str, listeners)), READY_VARIABLE: str(write_end),
                                  PREDECESSOR_VARIABLE: str(os.getpid())})
        if self.activated:
            env[SYSTEMD_VARIABLE] = ":".join(f"{sock.fileno()}={name}" for sock, name in self.activated)
        passed = [*listeners, write_end]
        for name, service in self.answering:
            env[name] = str(service.sock.fileno())
            passed.append(service.sock.fileno())
        # Not systemd's sockets again (they are among ours, named in PREFORK_SYSTEMD_FDS: LISTEN_PID
        # could not name a child not yet started), and the watchdog is the new master's too.
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "WATCHDOG_PID"):
            env.pop(name, None)
        if self.pidfile is not None:
            self.pidfile.move_aside()
        command = [sys.executable, *sys.orig_argv[1:]]
        try:
            self.new_master = start_process(command, cwd=self.cwd, env=env, pass_fds=passed)
        except OSError as exc:
            os.close(read_end)
            self._roll_back()
            raise PreforkError(f"cannot start a new master: {exc}") from None
        finally:
            os.close(write_end)
        self._ready = read_end
        self._selector.register(read_end, selectors.EVENT_READ, self)
        self._pidfd = os.pidfd_open(self.new_master)      # not reaped yet: nobody reaps between the two
        self._selector.register(self._pidfd, selectors.EVENT_READ, self)
        log.info("upgrade: started a new master, pid %s: %s", self.new_master, " ".join(command))
        return f"new master started, pid {self.new_master}"

    def on_event(self, master, fileobj, mask):
        if fileobj == self._ready:
            message = os.read(self._ready, 64)
            self._selector.unregister(self._ready)
            os.close(self._ready)
            self._ready = None
            if message.startswith(b"ready") and self.other_master_serves:
                self.handed_over = True
                for _, service in self.answering:
                    service.pause()
                log.info("upgrade: the new master (pid %s) is serving; stop this one (pid %s) with SIGTERM, "
                         "or stop the new one to roll back", self.new_master, os.getpid())
        elif fileobj == self._pidfd:
            code = self._reaped_code()
            self._selector.unregister(self._pidfd)
            os.close(self._pidfd)
            log.warning("upgrade rolled back: the new master (pid %s) exited (%s); this one carries on",
                        self.new_master, "its status was lost" if code is None else exit_text(code))
            self.new_master = self._pidfd = self._reaped = None
            self._roll_back()

    def claim(self, pid, status):
        """The pool reaped pid with waitpid(-1) (it reaps every child with --preload, or as PID 1): if
        it is the new master, keep its exit status for our pidfd event, which then has none to wait for.

        Comparing pids is safe here: until it is reaped (now), no other process can have its pid."""
        if pid != self.new_master:
            return False
        self._reaped = status
        return True

    def _reaped_code(self):
        """The exited new master's exit code (negative: killed by that signal), whoever reaped it;
        None if something reaped it without telling us: the log must not make up a status."""
        if self._reaped is not None:
            return os.waitstatus_to_exitcode(self._reaped)
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            info = None
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def on_pass(self, master, now):
        return None

    def _roll_back(self):
        self.handed_over = False
        if self.pidfile is not None:
            self.pidfile.move_back()
        for _, service in self.answering:
            service.resume()

    def close(self, in_child=False):
        if in_child:
            for fd in (self._pidfd, self._ready):
                if fd is not None:
                    os.close(fd)
            self._pidfd = self._ready = None
            return
        if self.other_master_serves:
            release_files(self.servers, [service for _, service in self.answering])   # the new master serves on them


def start_process(command, **popen_arguments):
    """Start command as our child; its pid.

    Popen does the starting (pass_fds, cwd, an exec error raised here), and nothing else: we follow
    the child by a pidfd. Popen's poll() and wait() go by pid: they take a child the pool reaped
    (waitpid(-1)) for one that exited with 0, and wait on whatever process has that pid by then, as
    its __del__ would. Setting returncode tells Popen there is nothing left to wait for.
    """
    process = subprocess.Popen(command, **popen_arguments)
    process.returncode = 0
    return process.pid


def release_files(servers, answering):
    """Leave the Unix socket files (listeners, control and metrics sockets) in place at exit: another
    master uses them."""
    for server in servers:
        owner = getattr(server, "_unix_path", None)
        if owner is not None:
            owner.release()
    for service in answering:
        if service.owner is not None:
            service.owner.release()
