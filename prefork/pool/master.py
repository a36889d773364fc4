"""Runs in the master: the loop that gathers facts, asks the planner, and acts.

One thread, no locks. The loop gathers facts and acts; planner.py decides,
worker_table.py keeps the worker table. Each pass:

    take_commands   signals, API calls and control requests, queued in the inbox
    reap            collect every exited worker (exit status, reason, boot failures)
    notice_workers  read the scoreboard: who became ready, who asked to stop the pool
    carry_out_plan  snapshot -> planner.plan() -> act; again until the plan is empty
    sample          psutil figures, a bounded amount of work per pass (monitor.py)
    sleep           on the selector until the nearest deadline or a wake-up

It learns of exits from a pidfd per worker (polled every 0.1 s without one;
orphans adopted as PID 1 or with zygotes are reaped with waitpid(-1)), of
the rest from the doorbell and inbox (signals.py). See docs/design.md.
"""

import gc
import logging
import os
import selectors
import signal
import time
from typing import Sequence

import setproctitle

from prefork import commands, logs
from prefork.errors import HaltServer, PreforkError, WorkerSignal
from prefork.listeners import describe_socket, prepare_for_pool, queued_connections
from prefork.pool import planner, scoreboard
from prefork.pool.actions import (
    Activate, AdoptGeneration, Halt, Kill, Retire, Spawn, StartZygote, Stop, StopPool, StopZygote,
)
from prefork.pool.master_commands import MasterCommands
from prefork.pool.monitor import Monitor
from prefork.pool.reloads import ReloadProgress
from prefork.pool.service import Service
from prefork.pool.snapshot import Snapshot, WorkerView
from prefork.pool.states import MasterState, Reason
from prefork.pool.worker import PoolSetup, tick_interval
from prefork.pool.worker_table import Pool
from prefork.pool.zygote import Zygotes
from prefork.signals import Doorbell, SignalInbox, default_sigchld

log = logging.getLogger("prefork")

AWAY_THRESHOLD = 1.0         # seconds: a select() this late means the master itself was stopped or paused
MAX_SLEEP = 60.0             # the loop wakes at least this often, whatever the settings
MAX_PLAN_ROUNDS = 4          # plan, act, plan again: each round sees what the last one did
MASTER_SIGNALS = tuple(commands.SIGNAL_COMMANDS)


class Master(MasterCommands):
    """Runs a pool of worker processes serving ``servers`` until stopped.

    Methods for the caller:

    - run() -> None            # the loop; returns after a stop, raises HaltServer if no worker can boot
                               # and KeyboardInterrupt after a Ctrl-C stop (as socketserver would)
    - stop(graceful=True)      # from any thread: like SIGTERM (graceful) or SIGQUIT
    - submit(command)          # from any thread: a commands.Command (scale, reload, ...)
    - stats() -> dict          # from any thread

    The hooks object (by default the first server) provides on_starting,
    pre_fork, post_fork, worker_ready, worker_exit and on_exit.
    """

    def __init__(self, servers, policy=None, config=None, hooks=None, load_handler=None, poll_interval=0.5,
                 reconfigure=None, services: Sequence[Service] = (), credentials=None):
        self.servers = list(servers)
        first = self.servers[0]
        self.policy = policy or first.policy
        self.config = config or first.config
        self.hooks = hooks or first
        self.load_handler = load_handler
        self.reconfigure = reconfigure        # a reload reads the settings again through it (the CLI's)
        self.services = list(services)        # the control socket, systemd, an upgrade
        self.credentials = credentials        # --user/--group, dropped in each child (privileges.py)
        self.tick_interval = tick_interval(poll_interval, self.config.worker_timeout)
        self.name = self.config.name or _handler_name(first)
        self.max_size = getattr(self.policy, "max_workers", None) or max(32, 4 * self.policy.workers)
        self.capacity = 2 * self.max_size + 4 * self.config.spare_workers + 2
        self.state = None                     # a MasterState once run() began
        self.stopping = None                  # a StopMode once a stop began
        self.interrupted = False              # a Ctrl-C stop: run() raises KeyboardInterrupt
        self.halt_reason = None
        self.generation = 0                   # bumped by each reload: older workers get replaced
        self.loading = None                   # with zygotes: the generation a reload is loading
        self.loading_since = 0.0
        self.reload = ReloadProgress()
        self.stop_began = None                # (requests served so far, why) when a stop began
        self.requested_size = None            # set by scale commands
        self.sizing = None                    # the policy's latest answer
        self.last_activation = float("-inf")
        self.resumed_at = 0.0                 # when the master last came back from being stopped
        self.started_at = None
        self.monitor = Monitor(self.config.monitor_interval)
        self.doorbell = Doorbell()
        self.inbox = SignalInbox(self.doorbell)
        self.pool = None
        self.zygotes = None                   # with --preload and a handler to load: zygote.py
        self._published = ((), None, 0)       # for stats() from other threads: one pass, one assignment
        self._reaps_orphans = False
        self._deadline = None
        self._problems_said = set()
        # Set by _start; _finish undoes whatever part of it happened.
        self.board = self.selector = self.setup = self._old_title = self._old_sigchld = None
        self._socket_state = []

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
        if self.interrupted:
            raise KeyboardInterrupt

    def stop(self, graceful=True):
        """Ask the loop to stop, from any thread: graceful like SIGTERM, else like SIGQUIT."""
        self.submit(commands.Stop(why="shutdown()", quick=not graceful))

    def submit(self, command):
        """Queue a command for the loop, from any thread."""
        self.inbox.post(command)

    def close(self):
        """Release what __init__ took, when run() never ran."""
        if self.started_at is None:
            self.doorbell.close()

    # -- start and finish --------------------------------------------------

    def _start(self):
        self.state = MasterState.RUNNING
        self.started_at = time.time()
        self._old_title = setproctitle.getproctitle()
        setproctitle.setproctitle(f"prefork: master [{self.name}]")
        self.board = scoreboard.Scoreboard(self.capacity, self.policy.threads)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.doorbell.reader, selectors.EVENT_READ)
        self.pool = Pool(self.capacity, self.board, self.selector, self.monitor, self._call_hook)
        self.pool.on_boot_failure = self.reload.failed
        for service in self.services:
            service.start(self.selector)
        self._socket_state = [prepare_for_pool(server, self.config) for server in self.servers]
        if self.load_handler is not None and self.config.preload:
            self.zygotes = Zygotes(self.pool, self.selector, self._close_in_child,   # a subreaper from now on
                                   self._reload_failed)
            self._reaps_orphans = True
        self._old_sigchld = default_sigchld()
        if self.inbox.install(MASTER_SIGNALS):
            if os.getpid() == 1 or self.zygotes:      # reap adopted orphans: SIGCHLD only wakes us
                self.inbox.install_handler(signal.SIGCHLD, _wake_only)
                self._reaps_orphans = True
        else:
            log.debug("serving from a thread: signals stay with the main thread; use shutdown()")
            if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
                log.warning("SIGCHLD is ignored in this process: the kernel reaps workers itself and "
                            "their exit statuses are lost; reset it in the main thread before serving")
        self.setup = PoolSetup(self.servers, self.config, self.policy.threads, self.board,
                               self.doorbell.write_fd(), self.hooks, self.load_handler,
                               self.tick_interval, os.getpid(), self.name, self.credentials)
        self._call_hook("on_starting")
        if self.config.preload:
            gc.freeze()     # keep the master's objects out of the collector: their pages stay shared
        sized_by = getattr(self.policy, "sized_by", "")      # which CPU limit set a defaulted size
        log.info("master %s starting: %s, %s worker(s)%s x %s thread(s), listening on %s",
                 os.getpid(), self.name, self.policy.workers, f" ({sized_by})" if sized_by else "",
                 self.policy.threads, ", ".join(describe_socket(server.socket) for server in self.servers))
        self._warn_about_settings()

    def _finish(self):
        if self.stop_began is not None and self.pool is not None:
            self._report_stop()
        if self.pool is not None:
            self.pool.kill_all()
        for service in reversed(self.services):      # the last started first: an upgrade releases files
            try:
                service.close()
            except Exception:
                log.exception("closing %s failed", type(service).__name__)
        if self.zygotes is not None:
            self.zygotes.close()
        if self.started_at is not None:
            self._call_hook("on_exit")
        self.inbox.restore()
        if self._old_sigchld is not None:
            signal.signal(signal.SIGCHLD, self._old_sigchld)
        if not self.another_master_serves():
            # The listeners' open file descriptions are shared with a master that took over (or
            # rolled back): putting blocking mode back would change them under its workers.
            for server, state in zip(self.servers, self._socket_state):
                state.restore(server)
        if self._old_title is not None:
            setproctitle.setproctitle(self._old_title)
        self._published = ((), *self._published[1:])      # no workers; the counts stay
        self.state = MasterState.STOPPED
        if self.setup is not None:
            self.setup.close()                       # the hand-off channel, the access log
        if self.selector is not None:
            self.selector.close()
        self.doorbell.close()
        log.info("master %s stopped", os.getpid())

    # -- the loop ----------------------------------------------------------

    def _loop_once(self):
        # Commands first: after a Ctrl-C or a systemd stop, which reach the workers too, their
        # exits must be seen as part of the stop, not as crashes.
        self.take_commands()
        self.pool.reap(self._reaps_orphans, self.stopping, self._claim)
        if self.stopping and not len(self.pool):
            return False
        now = time.monotonic()
        if self.zygotes:
            self.zygotes.gather(self.generation, self.loading)
        self.notice_workers(now)
        self.carry_out_plan(now)
        self.reload.check(self.generation, self.settled())
        workers = tuple(self.pool)
        self._published = (workers, dict(self.pool.restarts), self.pool.boot_failures)
        views = [(w, self.board.view(w.index)) for w in workers]
        wake_at = [self.monitor.work([(w, v.requests, v.busy_threads > 0) for w, v in views], now)]
        wake_at += [service.on_pass(self, now) for service in self.services]
        wake_at.append(logs.drain(now))     # log lines waiting for a full output: when to try again
        self.sleep(now, wake_at)
        return True

    def take_commands(self):
        for item in self.inbox.take():
            command = commands.for_signal(item) if isinstance(item, int) else item
            try:
                command.run(self)
            except PreforkError:
                pass                            # said in the log by the command itself
            except Exception:
                log.exception("command %s failed", command)

    def notice_workers(self, now):
        """Read the scoreboard: workers that became ready; once the newest generation serves, the older are outdated."""
        for worker in self.pool:
            self.pool.notice_ready(worker, self.board.view(worker.index), now)
        self.pool.mark_outdated(self.generation)

    def _claim(self, pid, status):
        """An exit reaped with waitpid(-1) that is no worker's: a zygote's, or a service's child."""
        if self.zygotes is not None and self.zygotes.claim(pid, status, self.generation, self.loading):
            return True
        return any(getattr(service, "claim", None) and service.claim(pid, status) for service in self.services)

    def carry_out_plan(self, now):
        snapshot = self.snapshot()
        for _ in range(MAX_PLAN_ROUNDS):
            result = planner.plan(snapshot, self.config, now)
            for problem in result.problems:
                if problem not in self._problems_said:
                    self._problems_said.add(problem)
                    log.error("%s", problem)
            if result.sizing is not None:
                if self.sizing is not None and result.sizing.target != self.sizing.target:
                    log.info("pool target %s -> %s worker(s): %s", self.sizing.target, result.sizing.target,
                             result.sizing.reason)
                self.sizing = result.sizing
            for action in result.actions:
                self._act(action, now)
            snapshot = self.snapshot()
            if not result.actions:
                break
        self._deadline = planner.next_deadline(snapshot, self.config, now)

    def snapshot(self):
        """The pool as the planner sees it: immutable, read from the worker table and the scoreboard."""
        views, pool = [], self.pool
        for worker in pool:
            view = self.board.view(worker.index)
            views.append(WorkerView(
                pid=worker.pid, slot=worker.slot, generation=worker.generation, born=worker.born,
                spare=worker.spare, ready=worker.ready, busy=view.busy_threads > 0, requests=view.requests,
                busy_threads=view.busy_threads, last_seen=view.tick, retire=view.retire, stop_pool=view.stop_pool,
                uss=worker.sample.uss if worker.sample else None,
                stop_reason=worker.stop_reason, stop_signal=worker.stop_signal, kill_at=worker.kill_at,
                age_limit=worker.age_limit))
        return Snapshot(
            workers=tuple(views), policy=self.policy, policy_state=self.sizing.state if self.sizing else None,
            requested_size=self.requested_size, generation=self.generation, stopping=self.stopping,
            resumed_at=self.resumed_at, failed_boots=pool.failed_boots_in_a_row,
            last_boot_failure_at=pool.last_boot_failure_at, ever_ready=pool.ever_ready,
            last_boot_failure=pool.last_boot_failure, last_activation=self.last_activation,
            max_size=self.max_size, capacity=self.capacity,
            zygotes=tuple(h.view() for h in self.zygotes.zygotes) if self.zygotes else None,
            loading=self.loading, loading_since=self.loading_since,
            backlog=queued_connections(server.socket for server in self.servers))

    def sleep(self, now, wake_at):
        """Wait on the selector until the nearest deadline, then notice if we were away."""
        deadlines = [d for d in (self._deadline, *wake_at) if d is not None]
        timeout = min(max(0.0, min(deadlines, default=now + MAX_SLEEP) - now) + 0.001, MAX_SLEEP)
        if self.pool.unwatched:
            timeout = min(timeout, 0.1)
        asleep = time.monotonic()
        for key, mask in self.selector.select(timeout):
            if key.data is not None:
                key.data.on_event(self, key.fileobj, mask)
        self.doorbell.drain()
        woke = time.monotonic()
        overslept = woke - (asleep + timeout)
        if overslept > AWAY_THRESHOLD:
            # A paused VM, a debugger, a stop SIGCONT cannot reach (serving from a thread): the workers'
            # silence was our doing. Measured from select(), so that a slow pass is not mistaken for it.
            log.warning("master was stopped for %.1f s; not counting that against the workers", overslept)
            self.resumed_at = woke

    # -- carrying out actions ----------------------------------------------

    def _act(self, action, now):
        pool = self.pool
        worker = pool.get(getattr(action, "pid", None))
        match action:
            case Spawn(slot, spare):
                pool.spawn(slot, spare, self.setup, self.generation, self._close_in_child,
                           self.zygotes and self.zygotes.fork_worker)
            case Halt(reason):
                self.halt_reason = reason
                self.begin_stop(graceful=False, why="no worker could boot")
            case StartZygote(generation, why):
                self.zygotes.start(self.setup, generation, self.reload.why if why else "")
            case StopZygote(pid, signum, detail, failure):
                self.zygotes.stop(pid, signum, detail, failure)
            case AdoptGeneration(generation):
                self.generation, self.loading = generation, None
                self.reload.loaded(generation)
                log.info("reloading %s worker(s) one at a time (generation %s)", len(self.pool), generation)
            case _ if worker is None:
                return
            case StopPool(_, slot):
                self.board.writer(worker.index).set(scoreboard.STOP_POOL, 0)
                self.begin_stop(graceful=True, why=f"shutdown() in worker {slot}")
            case Activate(_, slot):
                log.info("spare worker %s (pid %s) now serving as worker %s", worker.slot, worker.pid, slot)
                worker.spare, worker.slot = False, slot
                self.board.writer(worker.index).set(scoreboard.SLOT, slot)
                self.last_activation = now
                pool.signal(worker, WorkerSignal.ACTIVATE)
            case Retire():
                self._log_retire(worker, action)
                if not action.drain:          # the pool goes on: stop accepting at once (worker_process.py)
                    self.board.writer(worker.index).set(scoreboard.ALONE, 1)
                pool.signal(worker, signal.SIGTERM, action.reason, action.deadline)
            case Stop(_, reason, signum, deadline, detail):
                if reason == Reason.TIMEOUT:
                    log.error("worker %s (pid %s) %s: dumping its stacks (below), then SIGKILL",
                              worker.slot, worker.pid, detail)
                pool.signal(worker, signum, reason, deadline)
            case Kill():
                if worker.stop_signal == WorkerSignal.DUMP_STACKS:
                    log.info("worker %s (pid %s): SIGKILL after its stack dump", worker.slot, worker.pid)
                else:
                    after = "SIGQUIT" if worker.stop_signal == signal.SIGQUIT else "its graceful timeout"
                    log.warning("worker %s (pid %s) still alive after %s: SIGKILL", worker.slot, worker.pid, after)
                pool.signal(worker, signal.SIGKILL)
                worker.kill_at = None

    def _close_in_child(self):
        """In a new child: drop the master's fds (not the listeners, not the doorbell's write end); the
        child sets every signal handler itself."""
        self.selector.close()
        self.doorbell.reader.close()
        self.pool.close_in_child()
        for service in self.services:
            service.close(in_child=True)
        if self.zygotes:
            self.zygotes.close_in_child()

    def _call_hook(self, name, *args):
        try:
            getattr(self.hooks, name)(*args)
        except Exception:
            log.exception("%s hook raised; carrying on", name)


def _handler_name(server):
    handler = server.RequestHandlerClass
    return getattr(handler, "__qualname__", None) or type(server).__name__


def _wake_only(signum, frame):
    """SIGCHLD while we reap orphans: the wake-up fd does the rest."""
