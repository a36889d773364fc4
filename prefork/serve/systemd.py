"""Runs in the master of `prefork serve`: systemd's socket activation and sd_notify.

Both protocols are a few lines of documented environment and a datagram, so
we speak them directly rather than depend on python-systemd:

- Socket activation: LISTEN_PID names us, LISTEN_FDS counts the sockets
  starting at fd 3, LISTEN_FDNAMES names them. We take them and unset the
  variables, so that nothing we start mistakes them for its own. We never
  unlink a socket file systemd created.
- sd_notify: datagrams to NOTIFY_SOCKET ("@name" is an abstract socket):
  READY=1 once the pool has its workers; RELOADING=1 with MONOTONIC_USEC
  (systemd 253's Type=notify-reload needs both) as a reload begins, READY=1
  once every worker runs the new generation, or, if the new code fails, a
  STATUS= saying so and no READY=1 (systemd then reports the reload failed,
  while the old workers serve on); STOPPING=1, STATUS= with the pool's size,
  MAINPID= after an upgrade (SIGUSR2), and WATCHDOG=1 every half WATCHDOG_USEC.
"""

import logging
import os
import socket
import time

from prefork.errors import BindError
from prefork.pool.service import Service
from prefork.pool.states import ReloadState

log = logging.getLogger("prefork")

FIRST_FD = 3


def listen_fds(environ=None):
    """The sockets systemd passed us, as [(socket, name)], or [] if none (or they are not ours)."""
    environ = os.environ if environ is None else environ
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = environ.get("LISTEN_FDNAMES", "").split(":")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    found = []
    for index, fd in enumerate(range(FIRST_FD, FIRST_FD + count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise BindError(f"LISTEN_FDS names fd {fd}, which is not an open socket ({exc.strerror})") from None
        sock.set_inheritable(False)
        found.append((sock, names[index] if index < len(names) else ""))
    return found


class Notifier(Service):
    """A master service (pool.service.Service) that keeps systemd informed, when NOTIFY_SOCKET is set."""

    def __init__(self, environ=None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", str(os.getpid()))
        self.watchdog = int(usec) / 2e6 if usec.isdigit() and watchdog_pid == str(os.getpid()) else None
        self.next_watchdog = 0.0
        self._sock = None
        self._ready = False
        self._reload = 0               # the number of the reload last announced (RELOADING=1)
        self._failure = ""             # "; reload N failed: why", in every STATUS= until the next reload
        self._stopping = False
        self._status = ""
        self._elsewhere = False

    @property
    def enabled(self):
        return bool(self.address)

    def notify(self, *lines):
        if not self.address:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Never waiting: a notify socket whose queue is full (systemd busy, a reader gone quiet) would
            # otherwise block the master's loop, which then reaps and forks nothing.
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            log.debug("sd_notify %s failed: %s", lines, exc)

    def start(self, selector):
        pass

    def on_event(self, master, fileobj, mask):
        pass

    def on_pass(self, master, now):
        elsewhere = master.main_is_elsewhere()        # an upgrade handed the service to a new master
        if self._elsewhere and not elsewhere and not master.stopping:
            self.notify(f"MAINPID={os.getpid()}", "READY=1")          # it rolled back: ours again
        self._elsewhere = elsewhere
        if master.stopping and not self._stopping:
            self._stopping = True
            if not master.another_master_serves():    # else the service goes on without us
                self.notify("STOPPING=1", f"STATUS=stopping {len(master.pool)} worker(s)")
        elif not master.stopping and not elsewhere:
            self._follow_reload(master.reload)
            if self._failure and master.generation == master.reload.generation and master.settled():
                self._failure, self._ready = "", False      # its workers booted after all, on a retry: READY=1
            reloading = master.reload.state in (ReloadState.LOADING, ReloadState.REPLACING)
            if master.settled() and not self._ready and not reloading:
                self._ready = True
                self.notify("READY=1", f"MAINPID={os.getpid()}")
            status = (master.summary() + self._failure)[:1024]
            if status != self._status:
                self._status = status
                self.notify(f"STATUS={status}")
        if self.watchdog is None:
            return None
        if now >= self.next_watchdog:
            self.notify("WATCHDOG=1")
            self.next_watchdog = now + self.watchdog
        return self.next_watchdog

    def _follow_reload(self, reload):
        """RELOADING=1 when a reload begins; once it is done, READY=1 comes with the settled pool (above);
        if it fails, STATUS= says why and READY=1 does not come."""
        if reload.number != self._reload:
            self._reload, self._failure, self._ready = reload.number, "", False
            self._status = f"reloading (generation {reload.generation})"
            self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                        f"STATUS={self._status}")
        if reload.state == ReloadState.FAILED and not self._failure:
            self._failure = f"; reload {reload.number} failed, the old workers serve on: {reload.error}"
            self._ready = True                 # no READY=1 for this reload: systemd says it failed

    def close(self, in_child=False):
        if self._sock is not None:
            self._sock.close()
