"""Runs in the master: psutil samples of the workers into plain records, a little at a time.

A worker that served since its last sample is sampled once per
monitor_interval, an idle one at least every IDLE_RESAMPLE seconds. Memory
limits use USS (the memory only that process holds): RSS counts pages shared
copy-on-write, so a preloaded pool would look N times bigger than it is.
Reading USS walks the page tables, which takes long for a big worker, so each
pass of the master's loop samples for at most SAMPLE_BUDGET seconds.
"""

import collections
import time
from typing import NamedTuple

import psutil

IDLE_RESAMPLE = 30.0        # how long an idle worker's sample stays good
SAMPLE_BUDGET = 0.005       # seconds of sampling per pass of the master's loop


class Sample(NamedTuple):
    rss: int             #: resident bytes, shared pages included
    uss: int             #: bytes only this process holds
    cpu_percent: float   #: of one CPU since the previous sample (the first: since the process started)
    num_fds: int
    num_threads: int


class Monitor:
    """Keeps one psutil.Process per pid, so cpu_percent measures between samples, and the round's queue."""

    def __init__(self, interval):
        self.interval = interval
        self.next_round_at = 0.0
        self._processes = {}
        self._queue = collections.deque()

    def sample(self, pid):
        """A Sample of pid, or None when it has gone or cannot be read.

        Best effort by design: a worker may exit halfway through a read of
        /proc, and nothing here may raise into the master's loop.
        """
        process = self._processes.get(pid)
        first = process is None
        try:
            if first:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                memory = process.memory_full_info()
                cpu = process.cpu_percent(None)        # the first call has nothing to compare with: 0.0
                if first:                              # so the first says: since the process started
                    times = process.cpu_times()
                    cpu = 100 * (times.user + times.system) / max(_age(process), 0.01)
                return Sample(memory.rss, memory.uss, cpu, process.num_fds(), process.num_threads())
        except (psutil.Error, OSError, ValueError):
            self.forget(pid)
            return None

    def forget(self, pid):
        self._processes.pop(pid, None)

    def work(self, workers, now):
        """Start a round when one is due, then sample for up to SAMPLE_BUDGET.

        workers: (worker, requests, busy) for each live worker; a worker's
        sample, sampled_requests and sampled_at are updated in place.
        Returns when the master's loop should come back: a time, or None.
        """
        if now >= self.next_round_at and not self._queue:
            self.next_round_at = now + self.interval
            for worker, requests, busy in workers:
                if (worker.sample and not busy and requests == worker.sampled_requests
                        and now - worker.sampled_at < IDLE_RESAMPLE):
                    continue       # an idle worker's memory and CPU do not change
                self._queue.append((worker, requests))
        started = time.monotonic()
        while self._queue:
            worker, requests = self._queue.popleft()
            if worker.reaped:
                continue
            worker.sample = self.sample(worker.pid) or worker.sample
            worker.sampled_requests, worker.sampled_at = requests, now
            if time.monotonic() - started >= SAMPLE_BUDGET:
                break
        return now if self._queue else self.next_round_at


def _age(process):
    """Seconds since process started, to the clock tick. Not time.time() - create_time(): create_time()
    adds the boot time, which the kernel gives in whole seconds, so that difference is off by up to one."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) - (process.create_time() - psutil.boot_time())
