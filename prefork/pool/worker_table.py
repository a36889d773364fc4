"""Runs in the master: its worker table; forks workers, watches and reaps them, records their exits.

It decides nothing: it carries out "fork a worker for slot 3" and "signal
that one", and records each exit with the reason exits.exit_reason() gives
it, as a log line, a count in stats() and, for a worker that never became
ready, a boot failure (the planner backs off from those).
"""

import collections
import logging
import os
import selectors
import signal
import time

from prefork.errors import SpawnError, WorkerExit
from prefork.pool import exits, forking, scoreboard
from prefork.pool.states import RESTART_REASONS, Reason
from prefork.pool.worker import Worker
from prefork.signals import exit_text

log = logging.getLogger("prefork")

HAS_PIDFD = hasattr(os, "pidfd_open")


class SlotHistory:
    """What outlives the workers of one slot: how often it restarted, why the last one went, and how
    many requests its workers served before they went (the metrics' counters survive recycles)."""

    __slots__ = ("restarts", "last_exit_reason", "requests")

    def __init__(self):
        self.restarts = 0
        self.last_exit_reason = None
        self.requests = 0


class GoneWorkers:
    """What the workers reaped so far did, summed: the part of each counter that no scoreboard slot holds."""

    def __init__(self):
        self.requests = 0
        self.exits = collections.Counter()        # by exit_kind()
        self.durations = [0] * (len(scoreboard.DURATION_BOUNDS) + 1)
        self.seconds = 0.0
        self.log_dropped = 0

    def add(self, board, index, view, kind):
        self.requests += view.requests
        self.exits[kind] += 1
        counts, seconds = board.durations(index)
        self.durations = [a + b for a, b in zip(self.durations, counts)]
        self.seconds += seconds
        self.log_dropped += board.log_dropped(index)


class Pool:
    """The live workers of one master, by pid, and the history of their slots."""

    def __init__(self, capacity, board, selector, monitor, call_hook):
        self.capacity = capacity
        self.monitor = monitor
        self.board = board
        self.selector = selector
        self.call_hook = call_hook
        self.workers = {}                     # pid -> Worker
        self.history = collections.defaultdict(SlotHistory)
        self.restarts = dict.fromkeys(RESTART_REASONS, 0)
        self.boot_failures = 0                # in all
        self.failed_boots_in_a_row = 0        # since a worker last became ready
        self.last_boot_failure = ""
        self.last_boot_failure_at = 0.0       # monotonic
        self.ever_ready = False
        self.gone = GoneWorkers()
        self.on_boot_failure = None           # called with (generation, message): the master follows reloads
        self._seen_boot_messages = set()

    def __len__(self):
        return len(self.workers)

    def __iter__(self):
        return iter(list(self.workers.values()))

    def get(self, pid):
        return self.workers.get(pid)

    @property
    def unwatched(self):
        """Workers without a pidfd, whose exit only polling finds."""
        return any(w.pidfd is None for w in self.workers.values())

    # -- forking ------------------------------------------------------------

    def spawn(self, slot, spare, setup, generation, close_master_fds, fork=None):
        """Fork a worker for slot; returns it, or None when it could not be forked (a boot failure).

        fork(worker, close_master_fds) -> pid does the forking: fork_here by
        default, or a zygote's (zygote.py), which forks it elsewhere and
        answers with the pid of a process that is already our child.
        """
        index = self._free_index()
        if index is None:                 # the planner never forks past the capacity
            raise RuntimeError(f"no free scoreboard slot (capacity {self.capacity})")
        worker = Worker(slot, setup, index, generation, spare)
        self.call_hook("pre_fork", worker)
        self.board.reset(index, time.monotonic())
        try:
            pid = (fork or fork_here)(worker, close_master_fds)
        except SpawnError as exc:
            self._boot_failed(worker, str(exc))
            return None
        worker.pid = pid
        self.workers[pid] = worker
        self._watch(worker)
        log.debug("spawned worker %s (pid %s)", slot, pid)
        return worker

    def _watch(self, worker):
        if not HAS_PIDFD:
            return
        try:
            worker.pidfd = os.pidfd_open(worker.pid)
            self.selector.register(worker.pidfd, selectors.EVENT_READ)
        except OSError as exc:        # out of fds: find its exit by polling instead
            log.warning("cannot watch worker %s with a pidfd (%s); polling for its exit",
                        worker.slot, exc.strerror)
            if worker.pidfd is not None:
                os.close(worker.pidfd)
            worker.pidfd = None

    def close_in_child(self):
        """In a new worker: close the pidfds of its siblings."""
        for worker in self.workers.values():
            if worker.pidfd is not None:
                os.close(worker.pidfd)
                worker.pidfd = None

    def _free_index(self):
        used = {worker.index for worker in self.workers.values()}
        return next((index for index in range(1, self.capacity + 1) if index not in used), None)

    # -- readiness and signals ------------------------------------------------

    def notice_ready(self, worker, view, now):
        """Mark a worker ready once its scoreboard slot says so; a ready worker ends a run of boot failures."""
        if worker.ready or not view.ready:
            return
        worker.ready = True
        self.ever_ready = True
        self.failed_boots_in_a_row = 0
        log.info("worker %s ready (pid %s, %.0f ms after fork)", worker.slot, worker.pid, (now - worker.born) * 1000)

    def mark_outdated(self, generation):
        """Once a worker of `generation` is ready, tell the older ones they are outdated: they adopt no
        connections handed over, which go to the new code. (Not before: a reload whose code fails to
        boot leaves the old workers serving, and adopting.)"""
        if any(w.ready and not w.spare and w.generation == generation for w in self.workers.values()):
            for worker in self.workers.values():
                if worker.generation < generation:
                    self.board.writer(worker.index).set(scoreboard.OUTDATED, 1)

    def signal(self, worker, signum, reason=None, deadline=None):
        """Send signum; with a reason, the worker is on its way out, SIGKILL due at deadline.

        Through its pidfd where it has one: a pid alone could name another
        process once the worker is reaped (by someone else) and its pid reused.
        """
        if reason is not None:
            worker.stop_reason, worker.stop_signal, worker.kill_at = reason, signum, deadline
        send_signal(worker.pid, worker.pidfd, signum)

    def total_requests(self):
        """Requests served by this pool's workers, the gone and the live ones."""
        return self.gone.requests + sum(self.board.view(w.index).requests for w in self.workers.values())

    # -- reaping ------------------------------------------------------------

    def reap(self, orphans, stopping, claim=None):
        """Collect exited workers; with orphans (PID 1, or a zygote's subreaper), also reap every other child.

        claim(pid, status) -> bool takes the exits of children that are not
        workers but someone's (a zygote's, zygote.py); the rest are adopted
        orphans, ignored.
        """
        if orphans:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                worker = self.workers.get(pid)
                if worker is None:
                    if claim is None or not claim(pid, status):
                        log.debug("reaped pid %s, which is not one of our workers", pid)
                else:
                    self._exited(worker, status, stopping)
            return
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:       # someone else reaped it: its status is lost
                pid, status = worker.pid, 0
            if pid:
                self._exited(worker, status, stopping)

    def kill_all(self):
        """A safety net when the master finishes: no worker outlives it."""
        for worker in list(self.workers.values()):
            self.signal(worker, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            self.forget(worker)

    def _exited(self, worker, status, stopping):
        code = os.waitstatus_to_exitcode(status)
        view = self.board.view(worker.index)
        self.notice_ready(worker, view, time.monotonic())       # since our last look?
        boot_message = self.board.message(worker.index)
        reason = exits.exit_reason(code, worker.stop_reason, bool(stopping), worker.ready,
                                     view.retire == scoreboard.EXHAUSTED)
        self.gone.add(self.board, worker.index, view, exits.exit_kind(reason, bool(stopping)))
        self.forget(worker)
        history = self.history[worker.slot]
        history.requests += view.requests
        history.last_exit_reason = str(reason)           # plain text for stats() and the hook
        if reason != Reason.STOP:
            history.restarts += 1
            self.restarts[reason] += 1
        how = exit_text(code)
        if not worker.ready and reason in (Reason.BOOT, Reason.TIMEOUT):
            self._boot_failed(worker, boot_message or _boot_failure_text(code, how, worker.stop_reason))
        elif reason == Reason.SIGNAL:
            log.error("worker %s (pid %s) died unexpectedly (%s); replacing it", worker.slot, worker.pid, how)
        elif reason == Reason.CRASH:
            log.error("worker %s (pid %s) exited unexpectedly (%s); replacing it", worker.slot, worker.pid, how)
        else:
            log.info("worker %s (pid %s) exited (%s, %s)", worker.slot, worker.pid, reason, how)
        self.call_hook("worker_exit", worker, code, str(reason))

    def _boot_failed(self, worker, message):
        self.boot_failed(f"worker {worker.slot}", message, worker.generation)

    def boot_failed(self, who, message, generation):
        """who (a worker, the zygote) failed to boot: log it once per cause, and count it."""
        first_time = message not in self._seen_boot_messages
        self._seen_boot_messages.add(message)
        (log.error if first_time else log.debug)("%s failed to boot: %s", who, message)
        self.count_failure(message, generation)

    def count_failure(self, message, generation):
        """Count a boot failure: the planner backs off from the next fork (exits.backoff_delay)."""
        self.boot_failures += 1
        self.failed_boots_in_a_row += 1
        self.last_boot_failure = message
        self.last_boot_failure_at = time.monotonic()
        log.debug("next boot attempt in %.1f s", exits.backoff_delay(self.failed_boots_in_a_row))
        if self.on_boot_failure is not None:
            self.on_boot_failure(generation, message)

    def forget(self, worker):
        self.workers.pop(worker.pid, None)
        worker.reaped = True
        self.monitor.forget(worker.pid)
        if worker.pidfd is not None:
            self.selector.unregister(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = None


def fork_here(worker, close_master_fds):
    """Fork worker from this process (the master); its pid. The child runs it and never returns here."""
    try:
        return forking.fork(lambda: worker.run_in_child(close_master_fds))
    except OSError as exc:            # EAGAIN, ENOMEM: out of processes or memory, for now
        raise SpawnError(f"cannot fork a worker: {exc.strerror}") from None


def send_signal(pid, pidfd, signum):
    """Signal a child through its pidfd if it has one, else by pid; nothing if it is gone."""
    try:
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def worker_stats(worker, board, history, now):
    """One worker's row of stats(), from its handle, its scoreboard slot and its slot's history."""
    view = board.view(worker.index)
    sample = worker.sample
    return {
        "slot": worker.slot, "pid": worker.pid,
        "state": "stopping" if worker.stop_reason is not None else view.state_name,
        "generation": worker.generation,
        "requests": view.requests, "busy_threads": view.busy_threads, "connections": view.connections,
        "request_seconds": now - view.request_start if view.request_start else None,
        "started_at": worker.started_at,
        "rss": sample.rss if sample else None, "uss": sample.uss if sample else None,
        "cpu_percent": sample.cpu_percent if sample else None,
        "num_fds": sample.num_fds if sample else None,
        "restarts": history.restarts if history else 0,
        "last_exit_reason": history.last_exit_reason if history else None,
    }


def _boot_failure_text(code, how, stop_reason):
    if stop_reason == Reason.TIMEOUT:
        return "not ready within the boot timeout"
    if code == WorkerExit.APP_LOAD_ERROR:
        return "the handler could not be loaded"
    return f"died before becoming ready ({how})"
