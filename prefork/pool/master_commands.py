"""Runs in the master: what each named command (prefork.commands) does to the pool.

The master's loop runs these in its own thread, for a signal, an API call or
a control request alike. Each returns a short text saying what it did (a
control client prints it), or raises PreforkError saying why it did nothing.
They change the facts the planner reads (the stop, the generation, the
requested size), never the workers directly.
"""

import dataclasses
import logging
import os
import signal
import threading
import time

from prefork import logs
from prefork.errors import PreforkError
from prefork.listeners import queued_connections
from prefork.pool import metrics
from prefork.pool.states import RESTART_REASONS, MasterState, Reason, StopMode
from prefork.pool.worker_table import worker_stats

log = logging.getLogger("prefork")


class MasterCommands:
    """The half of Master (master.py) that carries out commands and reports: a command's target.

    Its methods read and set the loop's attributes, which Master.__init__ defines.
    """

    def stats(self):
        """A snapshot of the pool: the master, each live worker, restarts by reason. Never raises."""
        board, sizing, pool, now = self.board, self.sizing, self.pool, time.monotonic()
        table, restarts, boot_failures = self._published
        history = pool.history if pool else {}
        return {
            "master": {"pid": os.getpid(), "name": self.name, "state": (self.state or MasterState.STOPPED).value,
                       "started_at": self.started_at, "policy": self.policy.name,
                       "target_workers": sizing.target if sizing else None,
                       "target_reason": sizing.reason if sizing else None,
                       "threads": self.policy.threads, "generation": self.generation,
                       "reload": self.reload.as_dict()},
            "workers": [worker_stats(w, board, history.get(w.slot), now) for w in sorted(table, key=_by_slot)],
            "restarts": {str(reason): count                    # text, not the enum: for print() and pickle too
                         for reason, count in (restarts or dict.fromkeys(RESTART_REASONS, 0)).items()},
            "boot_failures": boot_failures,
            "zygotes": self.zygotes.stats(self.generation) if self.zygotes else [],
        }

    def _warn_about_settings(self):
        config = self.config
        if config.client_timeout and config.worker_timeout and config.client_timeout >= config.worker_timeout:
            log.warning("the client timeout (%s s) is not below the worker timeout (%s s): a quiet client "
                        "gets its worker killed as hung unless the handler calls server.heartbeat()",
                        config.client_timeout, config.worker_timeout)
        if threading.active_count() > 1:
            log.warning("forking workers from a process with %s threads: a lock another thread holds at "
                        "fork time stays locked in the workers (Python 3.12+ warns about this too); "
                        "prefer serving from the main thread of a single-threaded program",
                        threading.active_count())

    def begin_stop(self, graceful, why, interrupt=False):
        """Stop every worker: SIGTERM and the graceful timeout, or SIGQUIT and a second (the planner's rule 4)."""
        self.interrupted = self.interrupted or interrupt
        if self.stopping == StopMode.QUICK or (self.stopping and graceful):
            return f"already stopping ({self.stopping})"
        self.stopping = StopMode.GRACEFUL if graceful else StopMode.QUICK
        self.state = MasterState.STOPPING
        self.stop_began = (self.pool.total_requests(), why)
        queued = queued_connections(server.socket for server in self.servers)
        waiting = "" if queued is None else f", {queued} connection(s) queued"
        serving = "; serving the queued connections first" if graceful and queued else ""
        log.info("master %s: %s stop of %s worker(s) (%s)%s%s", os.getpid(), self.stopping, len(self.pool), why,
                 waiting, serving)
        return f"{self.stopping} stop of {len(self.pool)} worker(s)"

    def begin_reload(self, why):
        """Replace every worker, one at a time, with one that loads the code (and settings) afresh.

        Settings that fail to load leave everything as it was; code that fails
        to import leaves the old workers serving, as their successors never
        become ready (the boot failures are logged, with their cause).
        """
        if self.reconfigure is not None:
            try:
                self._apply(self.reconfigure())
            except Exception as exc:          # the settings, or reading them: never the master's end
                problem = exc if isinstance(exc, PreforkError) else f"{type(exc).__name__}: {exc}"
                log.error("%s: not reloading, the settings have a problem: %s", why, problem)
                raise PreforkError(f"not reloading, the settings have a problem: {problem}") from None
        if self.stopping:
            log.info("%s ignored: the master is stopping", why)
            raise PreforkError(f"not reloading: the master is stopping ({self.stopping})")
        if self.zygotes:              # the generation moves on once the new code has loaded (the planner)
            self.loading, self.loading_since = self.generation + 1, time.monotonic()
            self.reload.begin(self.loading, why, loading=True)
            return f"loading the code in a new zygote, then replacing {len(self.pool)} worker(s) one at a time"
        self.generation += 1
        self.reload.begin(self.generation, why, loading=False)
        log.info("%s: reloading %s worker(s) one at a time (generation %s)", why, len(self.pool), self.generation)
        return f"reloading {len(self.pool)} worker(s) one at a time (generation {self.generation})"

    def _apply(self, change):
        if change.restart:
            log.warning("reload: %s changed, which takes a new master (SIGUSR2 or a restart); keeping the old",
                        ", ".join(change.restart))
        self.config = self.setup.config = change.config
        self.monitor.interval = change.config.monitor_interval
        if change.load_handler is not None:
            self.setup.load_handler = change.load_handler
        if change.tls is not None:            # the next generation's workers are forked with it
            for server in self.servers:
                if getattr(server, "tls", None) is not None:
                    server.tls = change.tls
        if change.workers is not None and change.workers != self.policy.workers:
            self.policy = dataclasses.replace(self.policy, workers=min(change.workers, self.max_size))
            self.requested_size = None
            if change.workers > self.max_size:
                log.warning("reload: %s workers asked for, but this master can run at most %s (the scoreboard's "
                            "size, set at start): %s worker(s)", change.workers, self.max_size, self.max_size)
            else:
                log.info("reload: %s worker(s) wanted", self.policy.workers)

    def set_size(self, size, relative, why):
        """Scale the pool; a size outside 1..max_size is clamped, and the clamp is an error to report."""
        current = self.sizing.target if self.sizing else self.policy.workers
        asked = current + size if relative else size
        wanted = max(1, min(asked, self.max_size))
        self.requested_size = wanted
        if wanted != asked:
            limit = (f"the most this master can run is {self.max_size} (set at start: max(32, 4 x --workers), or "
                     f"--max-workers)" if asked > self.max_size else "a pool keeps at least one worker")
            log.warning("%s: %s worker(s) asked for; scaled to %s: %s", why, asked, wanted, limit)
            raise PreforkError(f"scaled to {wanted} worker(s), not {asked}: {limit}")
        log.info("%s: %s worker(s) wanted", why, wanted)
        return f"{wanted} worker(s) wanted"

    def reopen_logs(self, why):
        """Reopen the log files here, and tell every worker to reopen its own (SIGUSR1)."""
        for worker in self.pool:
            self.pool.signal(worker, signal.SIGUSR1)
        if self.zygotes:                  # and the workers they fork from now on
            self.zygotes.signal_all(signal.SIGUSR1)
        try:
            reopened = logs.reopen()
        except OSError as exc:
            log.error("%s: cannot reopen the log file (%s); still writing to the old one", why, exc)
            raise PreforkError(f"cannot reopen the log file: {exc}") from None
        what = ", ".join(reopened) if reopened else "no log file (logging goes to stderr)"
        log.info("%s: reopened %s", why, what)
        return f"reopened {what}"

    def status(self):
        """stats(), for `prefork ctl status`, with what the services add (the control socket, ...)."""
        stats = self.stats()
        for service in self.services:
            stats["master"].update(getattr(service, "status", dict)())
        ready, why = metrics.health(self)
        stats["master"].update(ready=ready, ready_reason=why)
        return stats

    def resume(self, why):
        """We may have been stopped (SIGSTOP, Ctrl-Z) and continued: their silence meanwhile was ours."""
        self.resumed_at = time.monotonic()
        if self.stopping:
            # systemd and timeout(1) send SIGCONT right after the stop signal, in case we were stopped.
            log.debug("%s during a stop", why)
        else:
            log.info("%s: every worker gets a fresh timeout, in case the master was stopped", why)

    def ignore(self, why):
        log.info("%s ignored: it has no meaning to the master", why)
        return "ignored"

    def begin_upgrade(self, why):
        """Start a new master on the same sockets (SIGUSR2): the Upgrader service of `prefork serve`."""
        upgrader = next((s for s in self.services if hasattr(s, "begin")), None)
        if upgrader is None:
            log.info("%s ignored: upgrading in place is for `prefork serve`", why)
            return "ignored"
        try:
            return upgrader.begin(self)
        except PreforkError as exc:
            log.error("%s: %s", why, exc)
            raise

    def another_master_serves(self):
        """An upgrade's other master serves on our sockets now (see upgrade.py): were we to stop, the
        service would go on, so at exit we leave the sockets, their files and systemd to it."""
        return any(getattr(service, "other_master_serves", False) for service in self.services)

    def main_is_elsewhere(self):
        """After an upgrade's hand-over, the new master is the service's main process, not us."""
        return any(getattr(service, "main_is_elsewhere", False) for service in self.services)

    def settled(self):
        """The pool is running at its target, every serving worker ready and of the current generation."""
        if self.stopping or self.sizing is None or self.pool is None:
            return False
        serving = [w for w in self.pool if not w.spare and w.stop_reason is None]
        return len(serving) >= self.sizing.target and all(
            w.ready and w.generation == self.generation for w in serving)

    def summary(self):
        """One line about the pool, for systemd's STATUS=."""
        serving = [w for w in self.pool if not w.spare and w.stop_reason is None]
        busy = sum(1 for w in serving if self.board.view(w.index).busy_threads)
        return f"{len(serving)} worker(s), {busy} busy, generation {self.generation}"


    # -- what the master reports of its own actions --------------------------------------

    def _log_retire(self, worker, action):
        by = f" by pid {action.successor}" if action.successor else ""
        detail = f": {action.detail}" if action.detail else ""
        if action.reason == Reason.MEMORY:
            log.warning("worker %s (pid %s) %s: replacing it%s", worker.slot, worker.pid, action.detail, by)
        elif action.reason == Reason.STOP and action.detail:
            log.info("worker %s (pid %s) retired (%s): stopping it gracefully", worker.slot, worker.pid, action.detail)
        elif action.reason in (Reason.RECYCLE, Reason.RELOAD) or action.detail:
            log.info("worker %s (pid %s) replaced%s (%s%s): stopping it gracefully", worker.slot, worker.pid, by,
                     action.reason, detail)

    def _reload_failed(self, why, message):
        """A reload's zygote went without loading the code: the old generation goes on."""
        if self.loading is not None:
            self.reload.failed(self.loading, message)
        self.loading = None

    def _report_stop(self):
        """How many requests the stop served, and what it left in the accept queues (TCP listeners)."""
        served, why = self.pool.total_requests() - self.stop_began[0], self.stop_began[1]
        if self.another_master_serves():          # the queue goes on being served by the other master
            log.info("master %s: %s request(s) served during the stop (%s)", os.getpid(), served, why)
            return
        left = queued_connections(server.socket for server in self.servers)
        dropped = ("" if left is None else "; the accept queues are empty" if not left
                   else f"; {left} connection(s) left in the accept queues are dropped")
        (log.warning if left else log.info)("master %s: %s request(s) served during the stop (%s)%s",
                                            os.getpid(), served, why, dropped)


def _by_slot(worker):
    return (worker.spare, worker.slot)
