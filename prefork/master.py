"""The parent side of the pool: the worker table, the loop, signals, spawning, reaping, health.

One thread, no locks. Each pass of the loop:

    reap_workers      collect every exited worker (exit status, reason, boot failures)
    handle_signals    act on the signals and stop requests that arrived
    notice_workers    read the scoreboard: who became ready
    check_workers     timeouts: soft SIGABRT, then SIGKILL
    manage_workers    spawn up to the policy's target, recycle one at a time, shrink
    sample_workers    psutil figures (memory, CPU) every monitor_interval, after any spawn
    sleep             on the selector until the nearest deadline or a wake-up

How the loop learns that something happened, and why:
  - Child exits: a pidfd per worker (Linux 5.3+), registered in the selector.
    It works from any thread (serve_forever() may run in a thread, where no
    signal handler can be installed), needs no handler at all, and never
    makes us reap a child we did not start. We weighed a SIGCHLD handler with
    a self-pipe (main thread only, and reaping by pid is then a scan anyway)
    and signalfd (needs the signal blocked in every thread, which an embedded
    server cannot promise). Without pidfd_open we poll every 0.1 s.
    Running as PID 1 we also reap (and ignore) adopted orphans with
    waitpid(-1), and install a SIGCHLD handler to do it promptly.
  - Signals (main thread only): the handler appends the signal number to a
    deque; signal.set_wakeup_fd writes a byte to the wake-up socket. Nothing
    is logged, reaped or spawned inside a handler.
  - Workers ring the same wake-up socket (their "doorbell") when they become
    ready or ask to retire; the scoreboard holds the facts, the byte only
    wakes us. stop() from another thread writes to it too.
Measured on a 2-core VM (scripts/bench.py, "respawn"): SIGKILL of a worker to
its replacement answering a request takes 4 to 8 ms with a fork (a Python
fork alone is about 1 ms before the child runs), 2 to 3 ms with a spare. Of
that, 1.1 to 1.7 ms passes before the pidfd fires: the kernel tears the dead
process down first, so no supervisor can know sooner.
"""

import collections
import gc
import logging
import os
import selectors
import signal
import socket
import threading
import time

import setproctitle

from . import scoreboard
from .errors import HaltServer, WorkerExit
from .monitor import Monitor
from .policies import Candidate, PoolState
from .worker import FORK_BLOCKED_SIGNALS, STOP_BYTE, PoolSetup, Worker

log = logging.getLogger("prefork")

HAS_PIDFD = hasattr(os, "pidfd_open")

# Times, in seconds.
KILL_GRACE = 1.0             # between the polite signal and SIGKILL, for timeouts and quick stops
AWAY_THRESHOLD = 1.0         # a select() this late means the master itself was stopped or paused
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0   # between boot attempts after failures: doubling, capped
SPARE_REFILL_DELAY = 0.05    # between activating a spare and forking the next one
IDLE_RESAMPLE = 30.0         # how long an idle worker's psutil sample stays good
MAX_SLEEP = 60.0             # the loop wakes at least this often, whatever the settings

RUNNING, STOPPING = "running", "stopping"
EXIT_REASONS = ("timeout", "recycle", "memory", "reload", "stop", "boot", "crash", "signal")
_READY_STATES = (scoreboard.IDLE, scoreboard.BUSY, scoreboard.SPARE, scoreboard.STOPPING)
_MASTER_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCONT")


class SlotHistory:
    """What outlives the workers of one slot: how often it restarted and why the last one went."""

    __slots__ = ("restarts", "last_exit_reason")

    def __init__(self):
        self.restarts = 0
        self.last_exit_reason = None


class Master:
    """Runs a pool of worker processes serving ``servers`` until stopped.

    Methods for the caller:

    - run() -> None      # the loop; returns after a stop, raises HaltServer if no worker can boot
    - stop(graceful=True)   # from any thread: like SIGTERM (graceful) or SIGQUIT
    - stats() -> dict    # from any thread

    The hooks object (by default the first server) provides on_starting,
    pre_fork, post_fork, worker_ready, worker_exit and on_exit.
    """

    def __init__(self, servers, policy=None, config=None, hooks=None, load_handler=None, poll_interval=0.5):
        self.servers = list(servers)
        first = self.servers[0]
        self.policy = policy or first.policy
        self.config = config or first.config
        self.hooks = hooks or first
        self.load_handler = load_handler
        self.poll_interval = poll_interval
        self.name = self.config.name or _handler_name(first)
        self.capacity = max(64, 4 * self.policy.workers + self.config.spare_workers)
        self.workers = {}                     # pid -> Worker
        self.history = collections.defaultdict(SlotHistory)
        self.restarts = dict.fromkeys(EXIT_REASONS, 0)
        self.boot_failures = 0                # in all
        self.failed_boots_in_a_row = 0        # since a worker last became ready
        self.ever_ready = False
        self.generation = 0                   # bumped by SIGHUP: older workers get replaced
        self.size_adjustment = 0              # net SIGTTIN - SIGTTOU
        self.state = None
        self.stop_graceful = True
        self.halt_reason = None
        self.next_spawn_at = 0.0
        self.next_spare_at = 0.0
        self.next_sample_at = 0.0
        self.resumed_at = 0.0                 # when the master last came back from being stopped
        self.started_at = None
        self.monitor = Monitor()
        self._signals = collections.deque()
        self._stop_request = None             # set by stop() from another thread
        self._snapshot = ()                   # immutable view of the workers, for stats()
        self._seen_boot_messages = set()
        self._reaps_orphans = False
        # Set by _start; _finish undoes whatever part of it happened.
        self.board = self.selector = self._wake_r = self._wake_w = self._old_title = None
        self._socket_timeouts, self._old_handlers, self._old_wakeup_fd = [], {}, None

    # -- public ------------------------------------------------------------

    def run(self):
        try:
            self._start()
            while self._loop_once():
                pass
        finally:
            self._finish()
        if self.halt_reason:
            raise HaltServer(self.halt_reason)

    def stop(self, graceful=True):
        """Ask the loop to stop, from any thread: graceful like SIGTERM, else like SIGQUIT."""
        self._stop_request = "graceful" if graceful else "quick"
        self._wake()

    def stats(self):
        """A snapshot of the pool: the master, each live worker, restarts by reason."""
        board = self.board if self.state else None
        try:
            workers = [self._worker_stats(worker, board) for worker in sorted(self._snapshot, key=lambda w: w.slot)]
        except ValueError:      # the master finished (and closed the scoreboard) while we read
            workers = []
        return {
            "master": {"pid": os.getpid(), "name": self.name, "state": self.state or "stopped",
                       "started_at": self.started_at, "policy": self.policy.name,
                       "target_workers": self._target(), "threads": self.policy.threads},
            "workers": workers,
            "restarts": dict(self.restarts),
            "boot_failures": self.boot_failures,
        }

    # -- start and finish --------------------------------------------------

    def _start(self):
        self.state = RUNNING
        self.started_at = time.time()
        self._old_title = setproctitle.getproctitle()
        setproctitle.setproctitle(f"prefork: master [{self.name}]")
        self.board = scoreboard.Scoreboard(self.capacity)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self._socket_timeouts = [server.socket.gettimeout() for server in self.servers]
        for server in self.servers:
            # See worker.py: a worker that loses an accept race gets EAGAIN instead of blocking.
            # Datagram sockets stay blocking, as handlers reply on them (our UDPServer reads
            # them with MSG_DONTWAIT instead).
            if server.socket.type == socket.SOCK_STREAM:
                server.socket.setblocking(False)
        self._install_signals()
        self.setup = PoolSetup(self.servers, self.config, self.policy.threads, self.board,
                               self._wake_w.fileno(), self.hooks, self.load_handler,
                               self.poll_interval, os.getpid(), self.name)
        self._call_hook("on_starting")
        if self.config.preload:
            gc.freeze()     # keep the master's objects out of the collector: their pages stay shared
        log.info("master %s starting: %s, %s worker(s) x %s thread(s), listening on %s",
                 os.getpid(), self.name, self.policy.workers, self.policy.threads,
                 ", ".join(_describe_address(server) for server in self.servers))

    def _finish(self):
        for worker in list(self.workers.values()):   # a safety net: normally none is left
            _signal(worker.pid, signal.SIGKILL)
            try:
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            self._forget(worker)
        if self.state is not None:
            self._call_hook("on_exit")
        self._restore_signals()
        for server, timeout in zip(self.servers, self._socket_timeouts):
            if server.socket.fileno() >= 0:
                server.socket.settimeout(timeout)
        if self._old_title is not None:
            setproctitle.setproctitle(self._old_title)
        self.state = None
        self._snapshot = ()
        for resource in (self.selector, self._wake_r, self._wake_w, self.board):
            if resource is not None:
                resource.close()
        log.info("master %s stopped", os.getpid())

    # -- the loop ----------------------------------------------------------

    def _loop_once(self):
        # Signals first: after a Ctrl-C or a systemd stop, which reach the workers too, their
        # exits must be seen as part of the stop, not as crashes.
        self.handle_signals()
        self.reap_workers()
        if self.state == STOPPING and not self.workers:
            return False
        now = time.monotonic()
        self.notice_workers(now)
        self.check_workers(now)
        self.manage_workers(now)
        self.sample_workers(now)
        self._snapshot = tuple(self.workers.values())
        self.sleep(now)
        return True

    def reap_workers(self):
        """Collect exited workers; as PID 1, also reap adopted orphans and ignore them."""
        if self._reaps_orphans:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                worker = self.workers.get(pid)
                if worker is None:
                    log.debug("reaped pid %s, which is not one of our workers", pid)
                else:
                    self._worker_exited(worker, status)
            return
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:       # someone else reaped it: its status is lost
                pid, status = worker.pid, 0
            if pid:
                self._worker_exited(worker, status)

    def handle_signals(self):
        while self._signals:
            signum = self._signals.popleft()
            getattr(self, "handle_" + signal.Signals(signum).name[3:].lower())()
        request, self._stop_request = self._stop_request, None
        if request:
            self.begin_stop(graceful=request == "graceful", why="shutdown()")

    def notice_workers(self, now):
        """Read the scoreboard: workers that became ready since the last pass."""
        for worker in self.workers.values():
            self._notice(worker, now)

    def _notice(self, worker, now):
        if not worker.ready and self.board.read(worker.slot, scoreboard.STATE) in _READY_STATES:
            worker.ready = True
            self.ever_ready = True
            self.failed_boots_in_a_row = 0
            self.next_spawn_at = 0.0
            log.info("worker %s ready (pid %s, %.0f ms after fork)", worker.slot, worker.pid,
                     (now - worker.born) * 1000)

    def check_workers(self, now):
        """Escalate overdue stops to SIGKILL; SIGABRT workers silent for too long."""
        config = self.config
        for worker in list(self.workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                log.warning("worker %s (pid %s) still alive after %s: SIGKILL", worker.slot, worker.pid,
                            "its graceful timeout" if worker.stop_reason != "timeout" else "SIGABRT")
                _signal(worker.pid, signal.SIGKILL)
                worker.kill_at = None
            if worker.stop_reason is not None:
                continue
            if not worker.ready:
                silent, limit, what = now - max(worker.born, self.resumed_at), config.boot_timeout, "boot timeout"
            else:
                last_seen = max(self.board.read(worker.slot, scoreboard.TICK), self.resumed_at)
                silent, limit, what = now - last_seen, config.worker_timeout, "timeout"
            if limit and silent > limit:
                log.error("worker %s (pid %s) silent for %.1f s, over its %s of %s s: "
                          "SIGABRT (stack traces follow), then SIGKILL", worker.slot, worker.pid,
                          silent, what, limit)
                self._signal_worker(worker, signal.SIGABRT, "timeout", KILL_GRACE)

    def sample_workers(self, now):
        """psutil figures for stats() and memory limits; after spawning, never delaying it.

        Reading a worker's memory costs the master about a millisecond (the
        kernel walks its page tables for USS), so a worker that served nothing
        since its last sample, and is not busy, keeps that sample for up to
        IDLE_RESAMPLE seconds: an idle worker's memory and CPU do not change.
        An idle 16-worker pool cost the master 1 % of a CPU before this, and
        0.2 % for 2 workers; about nothing now.
        """
        if now < self.next_sample_at:
            return
        self.next_sample_at = now + self.config.monitor_interval
        for worker in self.workers.values():
            requests = self.board.read(worker.slot, scoreboard.REQUESTS)
            busy = self.board.read(worker.slot, scoreboard.STATE) == scoreboard.BUSY
            if worker.sample and not busy and requests == worker.sampled_requests \
                    and now - worker.sampled_at < IDLE_RESAMPLE:
                continue
            worker.sample = self.monitor.sample(worker.pid) or worker.sample
            worker.sampled_requests, worker.sampled_at = requests, now

    def manage_workers(self, now):
        """Bring the pool to the policy's size: recycle one worker at a time, activate a spare
        or spawn for each missing worker, shrink, and keep config.spare_workers spares."""
        if self.state != RUNNING:
            return
        for worker in list(self.workers.values()):
            if worker.spare and worker.stop_reason is None and worker.generation < self.generation:
                self._signal_worker(worker, signal.SIGTERM, "reload", self.config.graceful_timeout)
        active = [w for w in self.workers.values() if w.stop_reason is None]
        recycling = any(w.retire_reason or w.stop_reason in ("recycle", "memory", "reload")
                        for w in self.workers.values())
        if not recycling:
            self._choose_recycle([w for w in active if not w.spare], now)
        serving = [w for w in active if not w.spare and not w.retire_reason]
        spares = [w for w in active if w.spare]
        target = self._target()
        for spare in [s for s in spares if s.ready][:max(0, target - len(serving))]:
            self._activate(spare)
            serving.append(spare)
            spares.remove(spare)
            # Fork its successor a moment later: on a small machine the new spare's boot would
            # compete for the CPU with the one that is taking over right now.
            self.next_spare_at = now + SPARE_REFILL_DELAY
        missing, spares_missing = target - len(serving), self.config.spare_workers - len(spares)
        if now < self.next_spare_at:
            spares_missing = 0
        if (missing > 0 or spares_missing > 0) and now >= self.next_spawn_at:
            if self.failed_boots_in_a_row:      # probe with one worker until one boots
                probing = any(not w.ready for w in active)
                missing, spares_missing = (0, 0) if probing else (1, 0) if missing > 0 else (0, 1)
            for _ in range(missing):
                self.spawn_worker()
            for _ in range(spares_missing):
                self.spawn_worker(spare=True)
        ready = sum(1 for w in serving if w.ready)
        for worker in active:
            if worker.retire_reason and ready >= target:
                log.info("worker %s (pid %s) replaced (%s): stopping it gracefully",
                         worker.slot, worker.pid, worker.retire_reason)
                self._signal_worker(worker, signal.SIGTERM, worker.retire_reason, self.config.graceful_timeout)
        excess = len(serving) - target
        while excess > 0:
            candidates = {w.slot: w for w in serving if w.ready and w.stop_reason is None}
            if not candidates:
                break
            chosen = self.policy.choose_retire([self._candidate(w, now) for w in candidates.values()])
            self._signal_worker(candidates[chosen.slot], signal.SIGTERM, "stop", self.config.graceful_timeout)
            excess -= 1

    def _activate(self, spare):
        """Turn a booted spare into a serving worker: one signal, no fork, no import."""
        spare.spare = False
        _signal(spare.pid, signal.SIGUSR1)
        log.info("spare worker %s (pid %s) now serving", spare.slot, spare.pid)

    def sleep(self, now):
        """Wait on the selector until the nearest deadline, then notice if we were away."""
        timeout = self._seconds_to_next_deadline(now)
        asleep = time.monotonic()
        events = self.selector.select(timeout)
        for key, _ in events:
            if key.fileobj is self._wake_r:
                try:
                    while True:
                        data = self._wake_r.recv(4096)
                        if not data:
                            break
                        if STOP_BYTE in data:      # signal numbers, written here by set_wakeup_fd, are < 65
                            self._stop_request = self._stop_request or "graceful"
                except BlockingIOError:
                    pass
        woke = time.monotonic()
        overslept = woke - (asleep + timeout)
        if overslept > AWAY_THRESHOLD:
            # A paused VM, a debugger, or a stop when SIGCONT cannot reach us (serving from a
            # thread): the workers' silence was our doing, not theirs. Measured from the select
            # call, so that a slow pass (a slow hook) is not mistaken for it.
            log.warning("master was stopped for %.1f s; not counting that against the workers", overslept)
            self.resumed_at = woke

    def _seconds_to_next_deadline(self, now):
        deadlines = [self.next_sample_at]
        deadlines += [t for t in (self.next_spawn_at, self.next_spare_at) if t > now]
        for worker in self.workers.values():
            if worker.kill_at is not None:
                deadlines.append(worker.kill_at)
            elif worker.stop_reason is None:
                if not worker.ready and self.config.boot_timeout:
                    deadlines.append(max(worker.born, self.resumed_at) + self.config.boot_timeout)
                elif worker.ready and self.config.worker_timeout:
                    tick = max(self.board.read(worker.slot, scoreboard.TICK), self.resumed_at)
                    deadlines.append(tick + self.config.worker_timeout)
        timeout = min(max(0.0, min(deadlines) - now) + 0.001, MAX_SLEEP)
        polling = self._reaps_orphans or any(w.pidfd is None for w in self.workers.values())
        return min(timeout, 0.1) if polling else timeout

    # -- spawning and stopping workers -------------------------------------

    def spawn_worker(self, spare=False):
        slot = self._free_slot()
        if slot is None:
            log.warning("no free scoreboard slot (capacity %s); not spawning", self.capacity)
            return None
        worker = Worker(slot, self.setup, self.generation, spare)
        self._call_hook("pre_fork", worker)
        self.board.reset(slot, time.monotonic())
        # Keep signals blocked across fork: one sent to the new worker before it has installed
        # its own handlers then waits for them, instead of running ours in the child and being lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:            # EAGAIN, ENOMEM: out of processes or memory, for now
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self._boot_failed(worker, f"cannot fork a worker: {exc.strerror}")
            return None
        if pid == 0:
            worker.run_in_child(self._close_in_child)      # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        worker.pid = pid
        self.workers[pid] = worker
        if HAS_PIDFD:
            try:
                worker.pidfd = os.pidfd_open(pid)
                self.selector.register(worker.pidfd, selectors.EVENT_READ)
            except OSError as exc:        # out of fds: find its exit by polling instead
                log.warning("cannot watch worker %s with a pidfd (%s); polling for its exit",
                            slot, exc.strerror)
                if worker.pidfd is not None:
                    os.close(worker.pidfd)
                worker.pidfd = None
        log.debug("spawned worker %s (pid %s)", slot, pid)
        return worker

    def _close_in_child(self):
        """Run in a new worker: drop the master's own fds (not the listeners, not the doorbell).

        Its signal handlers need no restoring here: the worker sets every one of them.
        """
        self.selector.close()
        self._wake_r.close()
        for worker in self.workers.values():
            if worker.pidfd is not None:
                os.close(worker.pidfd)
                worker.pidfd = None

    def _signal_worker(self, worker, signum, reason, kill_after):
        worker.stop_reason = reason
        worker.retire_reason = None
        worker.kill_at = time.monotonic() + kill_after
        _signal(worker.pid, signum)

    def begin_stop(self, graceful, why):
        """Stop every worker: SIGTERM and wait graceful_timeout, or SIGQUIT and wait KILL_GRACE."""
        if self.state == STOPPING and (graceful or not self.stop_graceful):
            return
        self.state, self.stop_graceful = STOPPING, graceful
        log.info("master %s: %s stop of %s worker(s) (%s)", os.getpid(), "graceful" if graceful else "quick",
                 len(self.workers), why)
        for worker in self.workers.values():
            if graceful:
                self._signal_worker(worker, signal.SIGTERM, "stop", self.config.graceful_timeout)
            else:
                self._signal_worker(worker, signal.SIGQUIT, "stop", KILL_GRACE)

    def _worker_exited(self, worker, status):
        code = os.waitstatus_to_exitcode(status)
        self._notice(worker, time.monotonic())     # it may have become ready since our last look
        boot_message = self.board.message(worker.slot)
        self._forget(worker)
        reason = worker.stop_reason or ("boot" if not worker.ready else "signal" if code < 0 else "crash")
        history = self.history[worker.slot]
        history.last_exit_reason = reason
        if reason != "stop":
            history.restarts += 1
            self.restarts[reason] += 1
        how = f"signal {_signal_name(-code)}" if code < 0 else f"exit code {code}"
        if not worker.ready and reason in ("boot", "timeout"):
            self._boot_failed(worker, boot_message or _boot_failure_text(code, how, worker.stop_reason))
        elif reason in ("crash", "signal"):
            log.error("worker %s (pid %s) died unexpectedly (%s); replacing it", worker.slot, worker.pid, how)
        else:
            log.info("worker %s (pid %s) exited (%s, %s)", worker.slot, worker.pid, reason, how)
        self._call_hook("worker_exit", worker, code, reason)

    def _boot_failed(self, worker, message):
        self.boot_failures += 1
        self.failed_boots_in_a_row += 1
        first_time = message not in self._seen_boot_messages
        self._seen_boot_messages.add(message)
        (log.error if first_time else log.debug)("worker %s failed to boot: %s", worker.slot, message)
        if not self.ever_ready and self.failed_boots_in_a_row >= self.config.max_boot_failures:
            self.halt_reason = f"no worker could boot ({self.failed_boots_in_a_row} attempts): {message}"
            self.begin_stop(graceful=False, why="no worker could boot")
            return
        delay = min(BACKOFF_FIRST * 2 ** (self.failed_boots_in_a_row - 1), BACKOFF_MAX)
        self.next_spawn_at = time.monotonic() + delay
        log.debug("next boot attempt in %.1f s", delay)

    def _forget(self, worker):
        self.workers.pop(worker.pid, None)
        self.monitor.forget(worker.pid)
        if worker.pidfd is not None:
            self.selector.unregister(worker.pidfd)
            os.close(worker.pidfd)
            worker.pidfd = None
        self.board.reset(worker.slot, 0.0)
        self.board.write_message(worker.slot, "")

    # -- recycling ---------------------------------------------------------

    def _choose_recycle(self, active, now):
        """Mark at most one ready worker for replacement: reload, max-requests or memory."""
        memory_limit = self.config.max_worker_memory * 1024 * 1024
        for worker in active:
            if not worker.ready:
                continue
            if worker.generation < self.generation:
                worker.retire_reason = "reload"
            elif self.board.read(worker.slot, scoreboard.RETIRE):
                worker.retire_reason = "recycle"
            elif (memory_limit and worker.sample and worker.sample.uss > memory_limit
                  and now - worker.born >= self.config.min_worker_lifetime):
                worker.retire_reason = "memory"
                log.warning("worker %s (pid %s) uses %.1f MB unique memory, over %s MB: replacing it",
                            worker.slot, worker.pid, worker.sample.uss / 2**20, self.config.max_worker_memory)
            if worker.retire_reason:
                return

    # -- signals -----------------------------------------------------------

    def _install_signals(self):
        self._old_handlers, self._old_wakeup_fd = {}, None
        if threading.current_thread() is not threading.main_thread():
            log.debug("serving from a thread: signals stay with the main thread; use shutdown()")
            return
        names = _MASTER_SIGNALS + (("SIGCHLD",) if os.getpid() == 1 else ())
        for name in names:
            signum = getattr(signal, name)
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._reaps_orphans = os.getpid() == 1

    def _restore_signals(self):
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        self._old_handlers, self._old_wakeup_fd = {}, None

    def _on_signal(self, signum, frame):
        self._signals.append(signum)     # and set_wakeup_fd wakes the loop

    def handle_term(self):
        self.begin_stop(graceful=True, why="SIGTERM")

    def handle_int(self):
        self.begin_stop(graceful=False, why="SIGINT")

    def handle_quit(self):
        self.begin_stop(graceful=False, why="SIGQUIT")

    def handle_chld(self):
        pass              # reap_workers runs on the next pass

    def handle_cont(self):
        """We were stopped (SIGSTOP, Ctrl-Z) and continued: the workers' silence meanwhile was ours."""
        self.resumed_at = time.monotonic()
        log.warning("master was stopped and continued (SIGCONT); not counting that against the workers")

    def handle_hup(self):
        """Replace every worker, one at a time, with one that loads the code afresh."""
        self.generation += 1
        log.info("SIGHUP: reloading %s worker(s) one at a time", len(self.workers))

    def handle_ttin(self):
        if self._target() < self.capacity - 1:
            self.size_adjustment += 1
        log.info("SIGTTIN: %s worker(s) wanted", self._target())

    def handle_ttou(self):
        if self._target() > 1:
            self.size_adjustment -= 1
        log.info("SIGTTOU: %s worker(s) wanted", self._target())

    # -- helpers -----------------------------------------------------------

    def _target(self):
        busy = sum(1 for w in self._snapshot if self.state and
                   self.board.read(w.slot, scoreboard.STATE) == scoreboard.BUSY)
        return self.policy.target_workers(PoolState(len(self._snapshot), busy), self.size_adjustment)

    def _free_slot(self):
        used = {worker.slot for worker in self.workers.values()}
        return next((slot for slot in range(1, self.capacity + 1) if slot not in used), None)

    def _candidate(self, worker, now):
        busy = self.board.read(worker.slot, scoreboard.STATE) == scoreboard.BUSY
        return Candidate(worker.slot, now - worker.born, int(self.board.read(worker.slot, scoreboard.REQUESTS)), busy)

    def _worker_stats(self, worker, board):
        state = scoreboard.STATE_NAMES[int(board.read(worker.slot, scoreboard.STATE))] if board else "stopping"
        if worker.stop_reason is not None:
            state = "stopping"
        sample, history = worker.sample, self.history.get(worker.slot) or SlotHistory()
        started = board.read(worker.slot, scoreboard.REQUEST_START) if board else 0.0
        return {
            "slot": worker.slot, "pid": worker.pid, "state": state,
            "requests": int(board.read(worker.slot, scoreboard.REQUESTS)) if board else 0,
            "request_seconds": time.monotonic() - started if started else None,
            "started_at": worker.started_at,
            "rss": sample.rss if sample else None, "uss": sample.uss if sample else None,
            "cpu_percent": sample.cpu_percent if sample else None,
            "num_fds": sample.num_fds if sample else None,
            "restarts": history.restarts, "last_exit_reason": history.last_exit_reason,
        }

    def _call_hook(self, name, *args):
        try:
            getattr(self.hooks, name)(*args)
        except Exception:
            log.exception("%s hook raised; carrying on", name)

    def _wake(self):
        try:
            self._wake_w.send(b"s")
        except (OSError, AttributeError):
            pass


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:            # a real-time signal without a name
        return str(signum)


def _handler_name(server):
    handler = server.RequestHandlerClass
    return getattr(handler, "__qualname__", None) or type(server).__name__


def _describe_address(server):
    address = server.server_address
    if isinstance(address, tuple):
        host = address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return f"unix:{address.decode() if isinstance(address, bytes) else address}"


def _boot_failure_text(code, how, stop_reason):
    if stop_reason == "timeout":
        return "not ready within the boot timeout"
    if code == WorkerExit.APP_LOAD_ERROR:
        return "the handler could not be loaded"
    return f"died before becoming ready ({how})"
