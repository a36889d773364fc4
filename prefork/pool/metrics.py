"""Runs in the master: the pool's figures as metric families (exposition.py writes them), and its health.

Every figure is one the master already keeps: the scoreboard (requests,
busy threads, connections, the request-duration buckets each worker
records), its worker table (exits by reason, boot failures, what the
workers reaped so far did: worker_table.GoneWorkers), the psutil samples
and the accept queues. A counter is the sum of what the gone workers did
and what the live ones have done, so it never goes down when a worker is
recycled, killed or replaced by a reload: only a new master (an upgrade, a
restart) starts from zero, which Prometheus takes for a counter reset.
"""

import os
import time

import psutil

from prefork import output
from prefork.exposition import Family
from prefork.listeners import accept_queue, describe_socket
from prefork.pool import scoreboard
from prefork.pool.states import RESTART_REASONS, MasterState, ReloadState

EXIT_KINDS = (*(str(reason) for reason in RESTART_REASONS), "scale_down", "stop")
WORKER_STATES = ("booting", "idle", "busy", "stopping", "spare")


def health(master):
    """(ready, why): ready when the master runs, is not stopping or handing over to another master,
    and at least one worker of the current generation is ready, or, while a reload replaces the
    workers, one of an older generation still serves. /readyz and `prefork ctl status`."""
    if master.stopping:
        return False, f"the master is stopping ({master.stopping})"
    if master.state != MasterState.RUNNING:
        return False, f"the master is {master.state or 'not started'}"
    if master.main_is_elsewhere():
        return False, "draining: a new master serves (an upgrade)"
    serving = [w for w in master.pool if w.ready and not w.spare and w.stop_reason is None]
    ready = [w for w in serving if w.generation == master.generation]
    if ready:
        return True, f"{len(ready)} worker(s) of generation {master.generation} ready"
    if serving and master.reload.state == ReloadState.REPLACING:
        # A reload under way: the old workers serve until their successors are ready (a failed one is not this).
        return True, f"reloading: {len(serving)} worker(s) of an older generation serve until theirs are ready"
    return False, f"no worker of generation {master.generation} is ready yet"


def gather(master):
    """Every metric family of the pool, read now."""
    pool, board = master.pool, master.board
    workers = [(w, board.view(w.index)) for w in pool]
    gone = pool.gone
    by_slot = {slot: history.requests for slot, history in pool.history.items()}
    states = dict.fromkeys(WORKER_STATES, 0)
    busy_threads = idle_threads = connections = log_dropped = 0
    durations, seconds = list(gone.durations), gone.seconds
    for worker, view in workers:
        by_slot[worker.slot] = by_slot.get(worker.slot, 0) + view.requests
        state = "stopping" if worker.stop_reason is not None else view.state_name
        states[state] = states.get(state, 0) + 1
        if state in ("idle", "busy"):
            busy_threads += view.busy_threads
            idle_threads += board.threads - view.busy_threads
        connections += view.connections
        log_dropped += board.log_dropped(worker.index)
        counts, spent = board.durations(worker.index)
        durations = [a + b for a, b in zip(durations, counts)]
        seconds += spent
    ready, _ = health(master)
    families = [
        Family("prefork_requests", "counter", "requests served by the pool's workers, the gone and the live",
               [((), gone.requests + sum(view.requests for _, view in workers))]),
        Family("prefork_slot_requests", "counter", "requests served by the workers of one slot, the gone and the live",
               [((("slot", slot),), count) for slot, count in sorted(by_slot.items())]),
        Family("prefork_request_duration_seconds", "histogram", "time from a request's start to its end in a worker",
               [((), (durations, seconds))], scoreboard.DURATION_BOUNDS),
        Family("prefork_workers", "gauge", "worker processes by state",
               [((("state", state),), count) for state, count in states.items()]),
        Family("prefork_threads", "gauge", "accept threads of serving workers, busy with a request or idle",
               [((("state", "busy"),), busy_threads), ((("state", "idle"),), idle_threads)]),
        Family("prefork_connections", "gauge", "connections held by parking workers, parked or in service",
               [((), connections)]),
        *_listener_families(master.servers),
        Family("prefork_worker_exits", "counter", "worker exits by reason (scale_down: the pool shrank)",
               [((("reason", kind),), gone.exits.get(kind, 0)) for kind in EXIT_KINDS]),
        Family("prefork_boot_failures", "counter", "workers (or zygotes) that failed to boot", [((), pool.boot_failures)]),
        Family("prefork_generation", "gauge", "reloads the pool has moved to (the code's generation)",
               [((), master.generation)]),
        Family("prefork_reloads", "counter", "reloads by outcome (started, done, failed)",
               [((("outcome", "started"),), master.reload.number), ((("outcome", "done"),), master.reload.done),
                ((("outcome", "failed"),), master.reload.failures)]),
        Family("prefork_target_workers", "gauge", "the pool size the policy aims for",
               [((), master.sizing.target if master.sizing else master.policy.workers)]),
        Family("prefork_ready", "gauge", "1 when /readyz answers ready", [((), int(ready))]),
        *_worker_samples(workers),
        Family("prefork_log_lines_dropped", "counter", "log lines dropped because the output was not being read",
               [((("process", "master"),), output.dropped_total()),
                ((("process", "workers"),), gone.log_dropped + log_dropped)]),
        *_master_families(master),
    ]
    return families


def _listener_families(servers):
    queued, limits = [], []
    for server in servers:
        queue = accept_queue(server.socket)
        if queue is not None:
            labels = (("listener", describe_socket(server.socket)),)
            queued.append((labels, queue[0]))
            limits.append((labels, queue[1]))
    return [Family("prefork_listen_queue", "gauge", "connections waiting in a TCP listener's accept queue", queued),
            Family("prefork_listen_backlog", "gauge", "the accept queue's length limit (--backlog)", limits)]


def _worker_samples(workers):
    uss, cpu = [], []
    for worker, _ in workers:
        if worker.sample is not None:
            labels = (("slot", worker.slot),)
            uss.append((labels, worker.sample.uss))
            cpu.append((labels, worker.sample.cpu_percent))
    return [Family("prefork_worker_uss_bytes", "gauge", "memory only this worker holds (USS), sampled", uss),
            Family("prefork_worker_cpu_percent", "gauge", "CPU use of one worker since its previous sample", cpu)]


MASTER_SAMPLE_EVERY = 1.0    # seconds a psutil reading of the master is reused: USS walks the page tables,
_MASTER = {}                 # and a scraper may ask many times a second


def _master_families(master):
    times = os.times()
    families = [Family("process_cpu_seconds", "counter", "the master's CPU time, user and system",
                       [((), round(times.user + times.system, 3))]),
                Family("process_start_time_seconds", "gauge", "when the master started (Unix time)",
                       [((), master.started_at or time.time())])]
    now = time.monotonic()
    if _MASTER.get("pid") != os.getpid() or now - _MASTER["at"] >= MASTER_SAMPLE_EVERY:
        try:
            process = psutil.Process()
            with process.oneshot():
                memory = process.memory_full_info()
                _MASTER.update(pid=os.getpid(), at=now, rss=memory.rss, uss=memory.uss, fds=process.num_fds())
        except (psutil.Error, OSError):
            return families
    return families + [Family("process_resident_memory_bytes", "gauge", "the master's resident memory",
                              [((), _MASTER["rss"])]),
                       Family("prefork_master_uss_bytes", "gauge", "memory only the master holds (USS)",
                              [((), _MASTER["uss"])]),
                       Family("process_open_fds", "gauge", "the master's open file descriptors",
                              [((), _MASTER["fds"])])]
