"""The child side of the pool: boot, accept loop, graceful stop, heartbeats.

A Worker is created in the master as a small handle (slot, pid, times) that
touches nothing process-wide. After fork, run_in_child() does everything
process-wide in the child (signals, title, parent-death signal, closing the
master's fds) and ends in os._exit: a child never returns into the master's
stack.

Accepting without a thundering herd: every accept thread owns an epoll on
which each listening socket is registered with EPOLLEXCLUSIVE, so the kernel
wakes one waiter per incoming connection or datagram, with one listener or
ten. We chose this over
  - a blocking accept() per worker: also herd-free, but only for a single
    socket, and a worker blocked in accept() cannot notice a graceful stop
    without being interrupted by a signal mid-syscall;
  - SO_REUSEPORT with a socket per worker: spreads load evenly, but the
    kernel drops the connections queued on a worker's socket when it dies,
    and we promise that a dying worker loses nothing;
  - select/poll on shared sockets: wakes every idle worker per connection.
EPOLLEXCLUSIVE wakes waiters in LIFO order, so at low load the most recently
idle worker takes the next connection (warm caches) rather than a fair
round-robin; under load every worker is busy and the spread evens out.
The listening sockets are non-blocking (set once by the master), so a
worker that loses a race for a connection gets EAGAIN and waits again.
"""

import ctypes
import errno
import faulthandler
import itertools
import logging
import os
import random
import select
import signal
import sys
import threading
import time

import setproctitle

from . import scoreboard
from .errors import AppLoadError, WorkerExit

log = logging.getLogger("prefork")

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:                      # pragma: no cover - not Linux
    _libc = None


class PoolSetup:
    """What every worker of one pool needs, built once by the master."""

    def __init__(self, servers, config, threads, board, doorbell_fd, hooks, load_handler,
                 poll_interval, master_pid, name):
        self.servers = servers
        self.config = config
        self.threads = threads
        self.board = board
        self.doorbell_fd = doorbell_fd      # write end shared by all workers: "look at the scoreboard"
        self.hooks = hooks                  # the object with on_starting, post_fork, ... (the first server)
        self.load_handler = load_handler    # None, or a callable returning the handler class
        self.poll_interval = poll_interval
        self.master_pid = master_pid
        self.name = name


class Worker:
    """One worker process: a handle in the master, the running code in the child.

    Public attributes (read them in hooks): slot, pid, started_at (wall
    clock), born (monotonic), generation, spare (booted, waiting to be
    activated by the master before it accepts).
    """

    def __init__(self, slot, setup, generation=0, spare=False):
        self.slot = slot
        self.setup = setup
        self.generation = generation
        self.spare = spare
        self.pid = None
        self.started_at = time.time()
        self.born = time.monotonic()
        # Bookkeeping of the master: why it is being stopped and when to escalate.
        self.ready = False
        self.retire_reason = None     # set when the master decided to replace it
        self.stop_reason = None       # set when the master signalled it to go
        self.kill_at = None           # monotonic time for SIGKILL if still alive
        self.pidfd = None
        self.sample = None            # latest monitor.Sample
        self.sampled_requests, self.sampled_at = None, 0.0

    def __repr__(self):
        return f"<Worker slot={self.slot} pid={self.pid}>"

    # -- child side ----------------------------------------------------------

    def run_in_child(self, close_master_fds):
        """Entry point after fork. Never returns."""
        code = WorkerExit.CRASH
        try:
            close_master_fds()
            code = _ChildProcess(self).run()
        except SystemExit as exc:     # quick stop (SIGINT/SIGQUIT) or sys.exit in a handler
            code = exc.code if isinstance(exc.code, int) else WorkerExit.OK
        except BaseException:
            log.exception("worker %s crashed", self.slot)
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


class _ChildProcess:
    """Everything a worker does once forked; lives only in the child."""

    def __init__(self, worker):
        self.worker = worker
        self.setup = setup = worker.setup
        self.slot = setup.board.writer(worker.slot)
        self.stopping = False
        self.stop_r, self.stop_w = os.pipe()       # never drained: once written, every loop sees it
        self.requests = itertools.count(1)         # next() is atomic under the GIL, for accept threads
        self.max_requests = _jittered(setup.config.max_requests, setup.config.max_requests_jitter)
        self.retire_asked = False
        self.crashed = False

    def run(self):
        self.worker.pid = os.getpid()
        self._set_up_process()
        code = self._boot()
        if code != WorkerExit.OK:
            return code
        if self.worker.spare:
            self._wait_until_activated()
        if self.setup.threads == 1:
            self._accept_loop()
        else:
            self._run_threads()
        self.slot.set(scoreboard.STATE, scoreboard.STOPPING)
        return WorkerExit.CRASH if self.crashed else WorkerExit.OK

    # -- process set-up ----------------------------------------------------

    def _set_up_process(self):
        setup = self.setup
        signal.set_wakeup_fd(-1)                      # the master's, inherited
        signal.signal(signal.SIGTERM, self._on_graceful_stop)
        signal.signal(signal.SIGINT, _on_quick_stop)
        signal.signal(signal.SIGQUIT, _on_quick_stop)
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)     # meant for the master; SIGUSR1 activates a spare
        if self.worker.spare:                         # received by sigtimedwait, see _wait_until_activated
            signal.pthread_sigmask(signal.SIG_BLOCK, _SPARE_SIGNALS)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)     # the master's handler, inherited
        # SIGABRT is the master's "you are hung" signal: dump every thread's stack, then die.
        faulthandler.enable(file=sys.stderr, all_threads=True)
        self._watch_master()
        self._set_title()
        self.slot.set(scoreboard.PID, self.worker.pid)
        for server in setup.servers:
            server.stopping = False
            server.heartbeat = self._heartbeat
            server.shutdown = self._ask_master_to_stop
            server._runner = None                     # the master's, copied by fork: not ours to drive
        # The master kept these blocked across fork; with our handlers in place, let them in.
        # A spare keeps SIGUSR1 and SIGTERM blocked: it takes them with sigtimedwait.
        pending = FORK_BLOCKED_SIGNALS - (_SPARE_SIGNALS if self.worker.spare else set())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, pending)

    def _watch_master(self):
        """Ask the kernel for SIGTERM when the master dies (PR_SET_PDEATHSIG), and check it is alive.

        Called again after the boot hooks: the kernel clears the setting when a
        post_fork hook changes the process's credentials (dropping root).
        """
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        self._check_master()                          # it may have died before prctl took effect

    def _boot(self):
        """Run post_fork, load the handler, run worker_ready; become IDLE. Returns an exit code."""
        setup, hooks = self.setup, self.setup.hooks
        step = "post_fork hook"
        try:
            hooks.post_fork(self.worker)
            if setup.load_handler is not None:
                step = "handler import"
                handler = setup.load_handler()
                for server in setup.servers:
                    server.RequestHandlerClass = handler
            step = "worker_ready hook"
            hooks.worker_ready(self.worker)
        except SystemExit:
            raise
        except BaseException as exc:
            if isinstance(exc, AppLoadError):
                message, code = str(exc), WorkerExit.APP_LOAD_ERROR
            else:
                message, code = f"{step} raised {type(exc).__name__}: {exc}", WorkerExit.BOOT_ERROR
            setup.board.write_message(self.worker.slot, message)
            log.debug("worker %s failed to boot", self.worker.slot, exc_info=True)
            return code
        if self.stopping:
            return WorkerExit.OK
        self._watch_master()
        self.slot.end_request(time.monotonic(), 0)    # IDLE, with a fresh tick
        if self.worker.spare:
            self.slot.set(scoreboard.STATE, scoreboard.SPARE)
        self._ring_master()
        return WorkerExit.OK

    def _wait_until_activated(self):
        """A spare: booted and heartbeating, not accepting, until the master's SIGUSR1.

        The signal is blocked and taken with sigtimedwait, so it cannot be
        lost between checks; SIGTERM (a stop, or the master's death) is taken
        the same way while we wait.
        """
        while True:
            received = signal.sigtimedwait(_SPARE_SIGNALS, self.setup.poll_interval)
            if received is not None:
                break
            self.slot.tick(time.monotonic())
            self._check_master()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SPARE_SIGNALS)
        if received.si_signo == signal.SIGTERM:
            self._on_graceful_stop(signal.SIGTERM, None)
            return
        self.worker.spare = False
        self._set_title()
        self.slot.end_request(time.monotonic(), 0)    # IDLE: serving from now on

    # -- signals -----------------------------------------------------------

    def _on_graceful_stop(self, signum, frame):
        """Stop accepting; the request in hand finishes. Runs in the main thread."""
        if self.stopping:
            return
        self.stopping = True
        for server in self.setup.servers:
            server.stopping = True
        os.write(self.stop_w, b"x")
        if os.getppid() != self.setup.master_pid:
            # Nobody is left to enforce the graceful timeout: do it ourselves.
            signal.alarm(max(1, int(self.setup.config.graceful_timeout + 0.5)))

    # -- serving -----------------------------------------------------------

    def _accept_loop(self):
        """Wait on every listener, take one request at a time, until stopped."""
        servers, slot, poll_interval = self.setup.servers, self.slot, self.setup.poll_interval
        by_fd = {server.fileno(): server for server in servers}
        monotonic = time.monotonic
        with select.epoll() as poller:
            for fd in by_fd:
                poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(self.stop_r, select.EPOLLIN)
            while not self.stopping:
                events = poller.poll(poll_interval)
                if not events:
                    slot.tick(monotonic())
                    self._check_master()
                for fd, _ in events:
                    # Even when stopping, serve what this batch holds: with EPOLLEXCLUSIVE the
                    # kernel may have woken only us for it, and nobody else would look soon.
                    server = by_fd.get(fd)
                    if server is not None and handle_one(server, slot):
                        self._count_request()
                for server in servers:
                    server.service_actions()

    def _count_request(self):
        requests = next(self.requests)
        self.slot.end_request(time.monotonic(), requests)
        if self.max_requests and requests >= self.max_requests and not self.retire_asked:
            self.retire_asked = True
            self.slot.set(scoreboard.RETIRE, 1)
            self._ring_master()

    def _run_threads(self):
        """threads > 1: accept threads serve; the main thread waits for a stop and watches the master."""
        threads = [threading.Thread(target=self._thread_main, name=f"accept-{n}", daemon=True)
                   for n in range(self.setup.threads)]
        for thread in threads:
            thread.start()
        with select.epoll() as poller:
            poller.register(self.stop_r, select.EPOLLIN)
            while not self.stopping:
                if not poller.poll(self.setup.poll_interval):
                    self._check_master()
        for thread in threads:
            thread.join()

    def _thread_main(self):
        try:
            self._accept_loop()
        except BaseException:
            log.exception("worker %s: accept thread crashed", self.worker.slot)
            self.crashed = True
            os.kill(os.getpid(), signal.SIGTERM)     # stop the whole worker; the master replaces it

    def _check_master(self):
        if os.getppid() != self.setup.master_pid and not self.stopping:
            log.warning("worker %s: master %s is gone, stopping", self.worker.slot, self.setup.master_pid)
            os.kill(os.getpid(), signal.SIGTERM)

    def _set_title(self):
        spare = " (spare)" if self.worker.spare else ""
        setproctitle.setproctitle(f"prefork: worker {self.worker.slot} [{self.setup.name}]{spare}")

    def _heartbeat(self):
        """server.heartbeat(): a long-lived handler says it is alive, not hung."""
        self.slot.tick(time.monotonic())

    def _ask_master_to_stop(self):
        """server.shutdown() in a worker: ask the master for a graceful stop of the whole pool.

        It returns at once: waiting here would wait for our own stop, which
        comes only after the request in hand, the one calling us.
        """
        self._ring_master(STOP_BYTE)

    def _ring_master(self, message=b"w"):
        try:
            os.write(self.setup.doorbell_fd, message)
        except OSError:        # full (the master will look anyway) or the master is gone
            pass


def handle_one(server, slot=None):
    """Take one request from server's socket and handle it, as socketserver does.

    The same steps and hooks as socketserver's _handle_request_noblock, plus
    the scoreboard's busy mark once a request is really in hand. Returns
    False when there was nothing to take (another worker won the race).
    """
    try:
        request, client_address = server.get_request()
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.warning("cannot accept on %s: %s; pausing 0.1 s", server.server_address, exc.strerror)
            time.sleep(0.1)
        return False
    if slot is not None:
        slot.begin_request(time.monotonic())
    if server.verify_request(request, client_address):
        try:
            server.process_request(request, client_address)
        except Exception:
            server.handle_error(request, client_address)
            server.shutdown_request(request)
        except BaseException:
            server.shutdown_request(request)
            raise
    else:
        server.shutdown_request(request)
    return True


_SPARE_SIGNALS = {signal.SIGUSR1, signal.SIGTERM}
# Blocked by the master across fork (see Master.spawn_worker); unblocked here once handled.
FORK_BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTTIN,
                        signal.SIGTTOU, signal.SIGUSR1, signal.SIGCHLD}
STOP_BYTE = b"S"           # through the doorbell: "stop the pool" (signal numbers written there are < 65)


def _on_quick_stop(signum, frame):
    """SIGINT / SIGQUIT: leave now, abandoning the request in hand."""
    raise SystemExit(WorkerExit.OK)


def _jittered(limit, jitter):
    return limit + random.randint(0, jitter) if limit else 0
