"""Runs in the serving process: serve_forever() for the in-process policies: Serial, ForkPerRequest, ThreadPerRequest.

One loop over one server or several at once. It waits on every server's
socket plus the doorbell (signals.py), so shutdown() returns at once, and
calls each server's service_actions() every pass (at least every
poll_interval), as socketserver does.

Run from the main thread it handles the signals a pool's master handles, each
with a meaning that fits a single process (the README's signal table):
SIGTERM stops after the request in hand, SIGQUIT stops at once, SIGINT stays
Python's KeyboardInterrupt (socketserver's behaviour), SIGUSR1 reopens logs,
and SIGHUP, SIGTTIN, SIGTTOU, SIGUSR2 and SIGWINCH are logged and ignored,
since there are no workers to reload or resize. Processes forked per request
get the default handlers back, so a signal to the process group still stops
them as it would under socketserver.
"""

import logging
import os
import selectors
import signal

import setproctitle

from prefork import commands, logs
from prefork.handling import handle_one
from prefork.listeners import describe_socket
from prefork.signals import Doorbell, SignalInbox

log = logging.getLogger("prefork")

# SIGINT is not among them: it stays Python's KeyboardInterrupt, as under socketserver. SIGQUIT
# means "at once", so it interrupts the request in hand the same way (see _quit_at_once).
LOOP_SIGNALS = tuple(signum for signum in commands.SIGNAL_COMMANDS if signum not in (signal.SIGINT, signal.SIGQUIT))


class RequestLoop:
    """Serves ``servers`` in this process, with the first one's policy, until stopped."""

    def __init__(self, servers, poll_interval=0.5):
        self.servers = servers
        self.poll_interval = poll_interval
        self.stopped = False
        self.doorbell = Doorbell()
        self.inbox = SignalInbox(self.doorbell)
        first = servers[0]
        self.name = first.config.name or getattr(first.RequestHandlerClass, "__qualname__", type(first).__name__)

    def run(self):
        old_title = setproctitle.getproctitle()
        setproctitle.setproctitle(f"prefork: server [{self.name}]")
        if self.inbox.install(LOOP_SIGNALS, reset_in_children=True):
            self.inbox.install_handler(signal.SIGQUIT, _quit_at_once)
        log.info("server %s starting: %s, policy %s, listening on %s", os.getpid(), self.name,
                 self.servers[0].policy.name, ", ".join(describe_socket(s.socket) for s in self.servers))
        try:
            self._serve()
        finally:
            self.inbox.restore()
            setproctitle.setproctitle(old_title)
            log.info("server %s stopped", os.getpid())

    def _serve(self):
        poll_interval, reader = self.poll_interval, self.doorbell.reader
        with selectors.DefaultSelector() as selector:
            for server in self.servers:
                selector.register(server, selectors.EVENT_READ)
            selector.register(reader, selectors.EVENT_READ)
            while not self.stopped:
                ready = selector.select(poll_interval)
                self.doorbell.drain()
                for item in self.inbox.take():
                    command = commands.for_signal(item) if isinstance(item, int) else item
                    command.run(self)
                for key, _ in ready:
                    if self.stopped:
                        break
                    if key.fileobj is not reader:
                        handle_one(key.fileobj)
                for server in self.servers:
                    server.service_actions()

    def close(self):
        self.doorbell.close()

    def stop(self, graceful=True):
        """From any thread: stop after the request in hand."""
        self.submit(commands.Stop(why="shutdown()", quick=not graceful))

    def submit(self, command):
        self.inbox.post(command)

    # -- what commands mean in a single process ------------------------------------

    def begin_stop(self, graceful, why, interrupt=False):
        if interrupt:
            raise KeyboardInterrupt
        if not self.stopped:
            log.info("server %s: %s stop (%s)", os.getpid(), "graceful" if graceful else "quick", why)
        self.stopped = True
        for server in self.servers:
            server.stopping = True

    def begin_reload(self, why):
        self._no_workers(why, "reload")

    def set_size(self, size, relative, why):
        self._no_workers(why, "resize")

    def begin_upgrade(self, why):
        log.info("%s ignored: upgrading in place needs a pool (--policy prefork)", why)
        return "ignored"

    def reopen_logs(self, why):
        try:
            reopened = logs.reopen()
        except OSError as exc:
            log.error("%s: cannot reopen the log file (%s); still writing to the old one", why, exc)
            return f"cannot reopen the log file: {exc}"
        what = ", ".join(reopened) if reopened else "no log file (logging goes to stderr)"
        log.info("%s: reopened %s", why, what)
        return f"reopened {what}"

    def status(self):
        return {"master": {"pid": os.getpid(), "name": self.name, "policy": self.servers[0].policy.name,
                           "state": "stopping" if self.stopped else "running"},
                "workers": [], "restarts": {}, "boot_failures": 0}

    def resume(self, why):
        log.debug("%s", why)

    def ignore(self, why):
        log.info("%s ignored: it has no meaning to the server", why)

    def _no_workers(self, why, what):
        log.info("%s ignored: policy %s has no workers to %s", why, self.servers[0].policy.name, what)
        return "ignored"


def _quit_at_once(signum, frame):
    """SIGQUIT to a single-process server: leave the request in hand, as a pool's workers do."""
    raise KeyboardInterrupt
