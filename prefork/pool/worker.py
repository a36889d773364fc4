"""Runs in the master: the setup shared by a pool, and its small handle on each worker.

A Worker is created in the master as a small handle (slot, pid, times) that
touches nothing process-wide. After fork, run_in_child() hands over to
worker_process, which does everything process-wide in the child and ends in
os._exit: a child never returns into the master's stack.
"""

import logging
import os
import random
import resource
import time

from prefork.access import AccessLog
from prefork.errors import WorkerExit
from prefork.pool import handoff_process
from prefork.output import dropped_total
from prefork.pool.forking import exit_child, exit_code
from prefork.pool.scoreboard import LOG_DROPPED
from prefork.pool.worker_process import WorkerProcess

log = logging.getLogger("prefork")


class PoolSetup:
    """What every worker of one pool needs, built once by the master."""

    def __init__(self, servers, config, threads, board, doorbell_fd, hooks, load_handler,
                 tick_interval, master_pid, name, credentials=None):
        self.servers = servers
        self.config = config
        self.threads = threads
        self.board = board
        self.doorbell_fd = doorbell_fd      # write end shared by all workers: "look at the scoreboard"
        self.hooks = hooks                  # the object with on_starting, post_fork, ... (the first server)
        self.load_handler = load_handler    # None, or a callable returning the handler class
        self.tick_interval = tick_interval  # how often an idle worker heartbeats and checks its master
        self.master_pid = master_pid
        self.name = name
        self.credentials = credentials      # --user/--group: dropped in each child before any user code
        self.handoff = handoff_process.channel()   # parked connections move between workers through it
        self.intake_bell = os.eventfd(0, os.EFD_NONBLOCK)   # "look again whether to accept" (intake_process)
        owner = credentials and (credentials.uid, credentials.gid)     # opened here, inherited by every worker
        self.access_log = AccessLog(config.access_log, config.access_log_format, owner) if config.access_log else None
        raise_open_file_limit(config.max_connections + FDS_BESIDES_CONNECTIONS)

    def close(self):
        for end in self.handoff:
            end.close()
        os.close(self.intake_bell)
        if self.access_log is not None:
            self.access_log.close()


def tick_interval(poll_interval, worker_timeout):
    """How often an idle worker heartbeats: serve_forever()'s poll_interval, but never so rarely
    that it looks hung (a quarter of the worker timeout at most), and never "never" (None)."""
    interval = 0.5 if poll_interval is None or poll_interval <= 0 else poll_interval
    if worker_timeout:
        interval = min(interval, worker_timeout / 4)
    return max(interval, 0.001)


FDS_BESIDES_CONNECTIONS = 256         # listeners, pipes, log files, a handler's own files


def raise_open_file_limit(wanted):
    """Raise RLIMIT_NOFILE's soft limit to wanted where the hard limit allows, and say what was set.

    Inherited by every worker, each of which may hold --max-connections sockets.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.info("raised the open-file limit (RLIMIT_NOFILE) from %s to %s for --max-connections", soft, new)
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %s to %s: %s", soft, new, exc)
            new = soft
    if new < wanted:
        log.warning("the open-file limit is %s (hard limit %s): a worker runs out of descriptors before "
                    "--max-connections %s; raise the limit (ulimit -n, systemd's LimitNOFILE)",
                    new, hard, wanted - FDS_BESIDES_CONNECTIONS)


class Worker:
    """One worker process: a handle in the master, the running code in the child.

    Public attributes (read them in hooks): slot (its place in the pool,
    1..N; spares above N), pid, started_at (wall clock), born (monotonic),
    generation (how many reloads the pool had when it was forked), spare
    (booted, waiting to be activated by the master before it accepts).
    """

    def __init__(self, slot, setup, index, generation=0, spare=False):
        self.slot = slot
        self.setup = setup
        self.index = index            # its scoreboard slot, private to the master and the worker
        self.generation = generation
        self.spare = spare
        self.pid = None
        self.started_at = time.time()
        self.born = time.monotonic()
        # Bookkeeping of the master: why it is being stopped and when to escalate.
        self.ready = False
        self.stop_reason = None       # set when the master signalled it to go
        self.stop_signal = None
        self.kill_at = None           # monotonic time for SIGKILL if still alive
        self.pidfd = None
        self.reaped = False
        self.sample = None            # latest monitor.Sample
        self.sampled_requests, self.sampled_at = None, 0.0
        config = setup.config
        # Seconds it may live: --max-worker-age plus its own random jitter, drawn once, here.
        self.age_limit = config.max_worker_age + random.uniform(0, config.max_worker_age_jitter) \
            if config.max_worker_age else 0.0

    def __repr__(self):
        return f"<Worker slot={self.slot} pid={self.pid}>"

    # -- child side ----------------------------------------------------------

    def run_in_child(self, close_master_fds):
        """Entry point after fork. Never returns."""
        code = WorkerExit.CRASH
        try:
            close_master_fds()
            code = WorkerProcess(self).run()
        except SystemExit as exc:     # quick stop (SIGQUIT) or sys.exit in a handler
            code = exit_code(exc)
        except BaseException:
            log.exception("worker %s crashed", self.slot)
        finally:
            self.setup.board.writer(self.index).set(LOG_DROPPED, dropped_total())    # the master's metrics
            exit_child(code)
