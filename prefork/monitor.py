"""psutil sampling of worker processes into plain records.

The master calls sample() for each worker every monitor_interval. USS (the
memory only this process holds) is what memory limits use: RSS also counts
pages shared copy-on-write with the master and siblings, so a preloaded pool
would look N times bigger than it is.
"""

from typing import NamedTuple

import psutil


class Sample(NamedTuple):
    rss: int             #: resident bytes, shared pages included
    uss: int             #: bytes only this process holds
    cpu_percent: float   #: of one CPU since the previous sample
    num_fds: int
    num_threads: int


class Monitor:
    """Keeps one psutil.Process per pid so cpu_percent measures between samples."""

    def __init__(self):
        self._processes = {}

    def sample(self, pid):
        """A Sample of pid, or None when it has gone or cannot be read.

        Best effort by design: a worker may exit halfway through a read of
        /proc, and nothing here may raise into the master's loop.
        """
        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
            with process.oneshot():
                memory = process.memory_full_info()
                return Sample(memory.rss, memory.uss, process.cpu_percent(None),
                              process.num_fds(), process.num_threads())
        except (psutil.Error, OSError, ValueError):
            self.forget(pid)
            return None

    def forget(self, pid):
        self._processes.pop(pid, None)
