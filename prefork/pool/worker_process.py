"""Runs in each worker: process set-up, boot, accept loop, graceful stop, heartbeats, request cap.

Everything process-wide happens here, in the child (signals, title,
parent-death signal, dropping privileges); pool.worker.Worker is the master's
handle on it.

Two ways to stop accepting, kept apart: at its request cap a worker takes no
more connections but serves the one in hand as any other (server.stopping
stays False; the master retires it once its successor is ready); a graceful
stop (SIGTERM) sets server.stopping, and a stop of the whole pool also serves
the connections waiting in the accept queues before leaving.

Each accept thread owns an epoll with every listener registered
EPOLLEXCLUSIVE (docs/design.md, "Accepting"); the listeners are non-blocking,
so a lost race is EAGAIN and the thread waits again.
"""

import faulthandler
import itertools
import logging
import os
import random
import select
import signal
import threading
import time

import setproctitle

from prefork import logs, output
from prefork.errors import AppLoadError, PreforkError, WorkerExit, WorkerSignal
from prefork.handling import PoolRequest, handle_one
from prefork.pool import forking, scoreboard
from prefork.pool.forking import FORK_BLOCKED_SIGNALS, PR_SET_PDEATHSIG, prctl
from prefork.pool.observer_process import observer_for
from prefork.pool.parking_process import ParkingLoop, parks
from prefork.signals import ring, run_pending_handlers

log = logging.getLogger("prefork")

ACTIVATE_SIGNAL, DUMP_STACKS_SIGNAL = WorkerSignal.ACTIVATE, WorkerSignal.DUMP_STACKS


def successor_threshold(max_requests):
    """After how many requests a worker asks for its successor, ahead of its cap.

    A tenth of the cap early (at least one request, at most a hundred), so
    the successor has booted by the time the cap is reached; never before the
    first request, or an idle pool would replace itself forever.
    """
    if not max_requests:
        return 0
    return max(1, max_requests - min(100, max(1, max_requests // 10)))


class WorkerProcess:
    """Everything a worker does once forked; lives only in the child."""

    def __init__(self, worker):
        self.worker = worker
        self.setup = setup = worker.setup
        self.header = setup.board.writer(worker.index)
        self.accepting = True                       # False once stopping, or at the request cap
        self.stopping = False                       # a graceful stop began (SIGTERM)
        self.stop_r, self.stop_w = os.pipe()       # never drained: once written, every loop sees it
        # Drained: "a signal came". It is the process's wakeup fd (see _take_notices).
        self.notice_r, self.notice_w = os.pipe()
        os.set_blocking(self.notice_r, False)
        os.set_blocking(self.notice_w, False)
        self.reopen_requested = False
        self.activate_r = self.activate_w = None
        self.started = itertools.count(1)          # next() is atomic under the GIL, for accept threads
        self.accepted = 0
        self.max_requests = _jittered(setup.config.max_requests, setup.config.max_requests_jitter)
        self.soft_limit = successor_threshold(self.max_requests)
        self.exhausted = False
        self.crashed = False
        self._local = threading.local()             # each accept thread's scoreboard record

    def run(self):
        self.worker.pid = os.getpid()
        self._set_up_process()
        code = self._boot()
        if code != WorkerExit.OK or self.stopping:
            return code
        if self.worker.spare and not self._wait_until_activated():
            return WorkerExit.OK
        if self.setup.threads == 1:
            self._accept_loop(0)
        else:
            self._run_threads()
        self.header.set(scoreboard.STATE, scoreboard.STOPPING)
        if self.crashed:
            return WorkerExit.CRASH
        return WorkerExit.RECYCLE if self.exhausted else WorkerExit.OK

    # -- process set-up ----------------------------------------------------

    def _set_up_process(self):
        setup = self.setup
        signal.set_wakeup_fd(self.notice_w, warn_on_full_buffer=False)   # replaces the master's, inherited
        signal.signal(signal.SIGTERM, self._on_graceful_stop)
        signal.signal(signal.SIGQUIT, _on_quick_stop)
        forking.handle_masters_signals()
        signal.signal(signal.SIGUSR1, self._on_reopen_logs)
        if self.worker.spare:
            self.activate_r, self.activate_w = os.pipe()
        signal.signal(ACTIVATE_SIGNAL, self._on_activate if self.worker.spare else forking.do_nothing)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)     # the master's handler, inherited
        # The master's "you are hung": write every thread's stack from C, without the GIL (a hung
        # thread may hold it), and carry on until the SIGKILL that follows. Not SIGABRT, whose
        # default action would then dump core. enable() covers real crashes (SIGSEGV, ...).
        self._dump_stacks_to(logs.stream())
        self._watch_master()
        self._set_title()
        self.header.set(scoreboard.PID, self.worker.pid)
        for server in setup.servers:
            server.stopping = False
            server.heartbeat = self._heartbeat
            server.shutdown = self._ask_master_to_stop
            server.stats = self._stats
            server._runner = None                     # the master's, copied by fork: not ours to drive
        # The master kept these blocked across fork; with our handlers in place, let them in.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)

    def _watch_master(self):
        """Ask the kernel for SIGTERM when the master dies (PR_SET_PDEATHSIG), and check it is alive.

        Called again after the boot hooks: the kernel clears the setting when a
        post_fork hook changes the process's credentials (dropping root).
        """
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        self._check_master()                          # it may have died before prctl took effect

    def _boot(self):
        """Drop privileges, run post_fork, load the handler, run worker_ready; become IDLE. Returns an exit code."""
        setup, hooks = self.setup, self.setup.hooks
        step = "post_fork hook"
        try:
            if setup.credentials is not None:
                setup.credentials.drop()              # before any hook or handler code runs
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
            elif isinstance(exc, PreforkError):       # the privilege drop
                message, code = str(exc), WorkerExit.BOOT_ERROR
            else:
                message, code = f"{step} raised {type(exc).__name__}: {exc}", WorkerExit.BOOT_ERROR
            setup.board.write_message(self.worker.index, message)
            log.debug("worker %s failed to boot", self.worker.slot, exc_info=True)
            return code
        if self.stopping:
            return WorkerExit.OK
        self._watch_master()
        self.header.tick(time.monotonic())
        self.header.set(scoreboard.STATE, scoreboard.SPARE if self.worker.spare else scoreboard.IDLE)
        self._ring_master()
        return WorkerExit.OK

    def _wait_until_activated(self):
        """A spare: booted and heartbeating, not accepting, until the master's ACTIVATE_SIGNAL.

        The signal's handler writes to a pipe we wait on, so an activation
        cannot be lost between two checks. Returns False if told to stop instead.
        """
        with select.epoll() as poller:
            poller.register(self.activate_r, select.EPOLLIN)
            poller.register(self.stop_r, select.EPOLLIN)
            poller.register(self.notice_r, select.EPOLLIN)
            while self.accepting:
                ready = {fd for fd, _ in poller.poll(self.setup.tick_interval)}
                if self.activate_r in ready:
                    break
                if self.notice_r in ready:
                    self._take_notices()
                self.header.tick(time.monotonic())
                self._check_master()
        if self.stopping:
            return False
        self.worker.spare = False
        self.worker.slot = int(self.header.get(scoreboard.SLOT)) or self.worker.slot
        self._set_title()
        self.header.tick(time.monotonic())
        self.header.set(scoreboard.STATE, scoreboard.IDLE)      # serving from now on
        self._ring_master()
        return True

    # -- signals -----------------------------------------------------------

    def _on_graceful_stop(self, signum, frame):
        """Stop accepting; the request in hand finishes. Runs in the main thread."""
        if self.stopping:
            return
        self.stopping = True
        # A parking worker retiring alone hands its connections over: its handlers need not wind down.
        moving = self.header.get(scoreboard.ALONE) and any(parks(server) for server in self.setup.servers)
        for server in self.setup.servers:
            server.stopping = not moving
        self._stop_accepting()
        if os.getppid() != self.setup.master_pid:
            # Nobody is left to enforce the graceful timeout: do it ourselves.
            signal.alarm(max(1, int(self.setup.config.graceful_timeout + 0.5)))

    def _on_reopen_logs(self, signum, frame):
        self.reopen_requested = True          # the loop reopens: a logging lock may be held right now
        ring(self.notice_w)                   # in case user code replaced our wakeup fd (asyncio does)

    def _take_notices(self):
        """A signal came: make sure its handler has run, then do what it asked of the loop.

        CPython 3.13.0, in a process forked from a thread other than the main
        one (a pool embedded in a thread), runs a handler only when a system
        call is interrupted, not between two bytecodes: a SIGTERM that arrives
        while a handler computes would wait for the next one. Every signal
        also wakes us through this pipe, and pthread_sigmask() runs the
        handlers still pending on its way out. Between two wake-ups, in the
        middle of a request, a handler may still wait: on 3.13.0 a SIGQUIT
        to such a pool takes effect when the request in hand ends (or at the
        master's SIGKILL a second later).
        """
        try:
            while os.read(self.notice_r, 4096):
                pass
        except BlockingIOError:
            pass
        run_pending_handlers()
        if self.reopen_requested:
            self.reopen_requested = False
            self._reopen_logs()

    def _reopen_logs(self):
        """Reopen the log files, in the loop, not in the signal handler (a handler's lock may be held)."""
        try:
            logs.reopen()
        except OSError as exc:
            log.warning("worker %s cannot reopen its log file: %s", self.worker.slot, exc)
        self._dump_stacks_to(logs.stream())

    @staticmethod
    def _dump_stacks_to(stream):
        """Stack dumps (a crash, or the master's DUMP_STACKS) go where the log goes."""
        faulthandler.enable(file=stream, all_threads=True)
        faulthandler.register(DUMP_STACKS_SIGNAL, file=stream, all_threads=True, chain=False)

    def _on_activate(self, signum, frame):
        os.write(self.activate_w, b"a")

    def _stop_accepting(self):
        if self.accepting:
            self.accepting = False
            os.write(self.stop_w, b"x")

    # -- serving -----------------------------------------------------------

    def _accept_loop(self, thread):
        """Wait on every listener, take one request at a time, until stopped or at the request cap;
        then, in a stop of the whole pool, serve what waits in the accept queues."""
        servers, tick_interval = self.setup.servers, self.setup.tick_interval
        record = self.setup.board.thread_writer(self.worker.index, thread)
        self._local.record = record                  # where this thread's heartbeat() goes
        if any(parks(server) for server in servers):
            ParkingLoop(self, thread, record).run()
            return
        request = PoolRequest(record, self.setup.config.client_timeout, self._accepted, observer_for(self.setup, self.worker))
        by_fd = {server.fileno(): server for server in servers}
        monotonic = time.monotonic
        with select.epoll() as poller:
            for fd in by_fd:
                poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
            poller.register(self.stop_r, select.EPOLLIN)
            if self.setup.threads == 1:                  # else the main thread takes the notices
                poller.register(self.notice_r, select.EPOLLIN)
            while self.accepting:
                events = poller.poll(tick_interval)
                if not events:
                    record.tick(monotonic())
                    self._check_master()
                for fd, _ in events:
                    if fd == self.notice_r:
                        self._take_notices()
                        continue
                    # Even when stopping, serve what this batch holds: with EPOLLEXCLUSIVE the
                    # kernel may have woken only us for it, and nobody else would look soon.
                    # At the request cap, though, not one more.
                    server = by_fd.get(fd)
                    if server is not None and not self.exhausted:
                        handle_one(server, request)
                for server in servers:
                    server.service_actions()
        if self.stopping and not self.exhausted and not self.header.get(scoreboard.ALONE):
            self._drain(servers, request)

    def _drain(self, servers, request):
        """A stop of the whole pool: serve the connections already queued, until every queue is empty
        (a non-blocking accept finds nothing); the master's SIGKILL at the graceful timeout bounds it."""
        while not self.exhausted and any(handle_one(server, request) for server in servers):
            pass

    def _accepted(self):
        """A request was accepted (in any thread): count it against --max-requests."""
        count = next(self.started)
        if not self.max_requests:
            return
        if count >= self.soft_limit and count < self.max_requests and not self.header.get(scoreboard.RETIRE):
            self.header.set(scoreboard.RETIRE, scoreboard.WANTS_SUCCESSOR)
            self._ring_master()
        if count >= self.max_requests and not self.exhausted:
            self.exhausted = True
            self.header.set(scoreboard.RETIRE, scoreboard.EXHAUSTED)
            self._ring_master()
            self._stop_accepting()        # the connection in hand is served as any other

    def _run_threads(self):
        """threads > 1: accept threads serve; the main thread waits for a stop and watches the master."""
        threads = [threading.Thread(target=self._thread_main, args=(n,), name=f"accept-{n}", daemon=True)
                   for n in range(self.setup.threads)]
        for thread in threads:
            thread.start()
        with select.epoll() as poller:
            poller.register(self.stop_r, select.EPOLLIN)
            poller.register(self.notice_r, select.EPOLLIN)
            while self.accepting:
                ready = {fd for fd, _ in poller.poll(self.setup.tick_interval)}
                if self.notice_r in ready:
                    self._take_notices()
                if not ready:
                    # No tick of our own here: the master judges liveness by the accept threads'
                    # records, so that a worker whose every thread is stuck looks hung.
                    self._check_master()
        for thread in threads:
            thread.join()

    def _thread_main(self, thread):
        try:
            self._accept_loop(thread)
        except BaseException:
            log.exception("worker %s: accept thread crashed", self.worker.slot)
            self.crashed = True
            os.kill(os.getpid(), signal.SIGTERM)     # stop the whole worker; the master replaces it

    def _check_master(self):
        self.header.set(scoreboard.LOG_DROPPED, output.dropped_total())     # for the master's metrics
        if os.getppid() != self.setup.master_pid and not self.stopping:
            log.warning("worker %s: master %s is gone, stopping", self.worker.slot, self.setup.master_pid)
            os.kill(os.getpid(), signal.SIGTERM)

    def _set_title(self):
        spare = " (spare)" if self.worker.spare else ""
        setproctitle.setproctitle(f"prefork: worker {self.worker.slot} [{self.setup.name}]{spare}")

    def _heartbeat(self):
        """server.heartbeat(): a long-lived handler says its thread is alive, not hung."""
        getattr(self._local, "record", self.header).tick(time.monotonic())

    def _ask_master_to_stop(self):
        """server.shutdown() in a worker: ask the master for a graceful stop of the whole pool.

        It returns at once: waiting here would wait for our own stop, which
        comes only after the request in hand, the one calling us. The request
        is a flag in our scoreboard slot; the doorbell only wakes the master.
        """
        self.header.set(scoreboard.STOP_POOL, 1)
        self._ring_master()

    def _stats(self):
        """server.stats() in a worker: what a worker knows, which is its own slot."""
        view = self.setup.board.view(self.worker.index)
        return {
            "master": {"pid": self.setup.master_pid, "name": self.setup.name},
            "worker": {"slot": self.worker.slot, "pid": os.getpid(), "generation": self.worker.generation,
                       "state": view.state_name, "requests": view.requests, "busy_threads": view.busy_threads,
                       "started_at": self.worker.started_at},
            "workers": [], "restarts": {}, "boot_failures": 0,
        }

    def _ring_master(self):
        ring(self.setup.doorbell_fd)


def _on_quick_stop(signum, frame):
    """SIGQUIT: leave now, abandoning the request in hand."""
    raise SystemExit(WorkerExit.OK)


def _jittered(limit, jitter):
    return limit + random.randint(0, jitter) if limit else 0
