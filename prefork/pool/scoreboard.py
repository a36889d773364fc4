"""Runs in the master and each worker: an anonymous shared mmap with one slot per worker.

Workers write their own slot on every request with no system call (a store
into shared memory, and time.monotonic(), which Linux serves from the vDSO).
The master reads every slot once per pass of its loop, into the snapshot its
planner decides from, and to answer stats(); nothing else crosses between
the processes per request.

A slot holds a header of float64 fields written by the worker's main thread,
then one record per accept thread (each thread writes only its own record, so
no write is ever shared), then a short UTF-8 text the worker leaves when it
fails to boot. An 8-byte aligned store is atomic on every platform we run on,
so a reader never sees half a value.
"""

import bisect
import mmap
from typing import NamedTuple

# Worker states, in the STATE header field. A SPARE is booted but not accepting yet.
BOOTING, IDLE, BUSY, STOPPING, SPARE = range(1, 6)
STATE_NAMES = {0: "free", BOOTING: "booting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping", SPARE: "spare"}
READY_STATES = (IDLE, SPARE, STOPPING)

# Values of the RETIRE field: what the worker says about its own --max-requests.
KEEP, WANTS_SUCCESSOR, EXHAUSTED = 0, 1, 2

# Header fields, in float64 units. SLOT is the place the master gives a spare it activates.
# ALONE: set by the master before the SIGTERM that retires this worker while the pool goes on
# (recycle, reload, shrink): stop accepting at once. Without it, a SIGTERM is a stop of the whole
# pool (from the master, or systemd signalling every process): serve the queued connections first.
# OUTDATED: set by the master once a newer generation serves: take no connections handed over.
# LOG_DROPPED: log lines the worker dropped because its output was full (output.py).
PID, STATE, TICK, RETIRE, STOP_POOL, SLOT, ALONE, OUTDATED, LOG_DROPPED = range(9)
_HEADER_FIELDS = 10                     # one to spare
# Request durations: the upper bounds (seconds) of the histogram's buckets, Prometheus's defaults
# widened at the fast end; a duration above the last falls in the +Inf bucket.
DURATION_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Per accept thread: busy or not, requests finished, when the request in hand began, last sign of
# life, connections held (parked or in service; parking handlers only), the sum of the durations of
# the requests finished, then a count per duration bucket (not cumulative; the last is +Inf).
T_BUSY, T_REQUESTS, T_REQUEST_START, T_TICK, T_CONNECTIONS, T_SECONDS, T_BUCKETS = range(7)
_THREAD_FIELDS = T_BUCKETS + len(DURATION_BOUNDS) + 1
MESSAGE_SIZE = 192


class SlotView(NamedTuple):
    """What the master reads of one slot in one pass."""

    pid: int
    state: int
    tick: float              #: the latest sign of life of any thread
    retire: int              #: KEEP, WANTS_SUCCESSOR or EXHAUSTED
    stop_pool: bool          #: the worker's server.shutdown() asked for a graceful stop of the pool
    requests: int            #: finished, over all threads
    busy_threads: int
    request_start: float     #: when the oldest request in hand began; 0.0 when none
    connections: int = 0     #: connections held by a parking worker, parked or in service

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    @property
    def state_name(self) -> str:
        if self.state == IDLE and self.busy_threads:
            return "busy"
        return STATE_NAMES.get(self.state, "free")


class Scoreboard:
    """Shared memory for ``slots`` workers of ``threads`` accept threads each; slots numbered 1..slots.

    Create it in the master before forking; every child shares the same
    pages (MAP_SHARED | MAP_ANONYMOUS). It is never closed explicitly: the
    mapping goes when the last reference does, so a stats() call racing the
    master's exit reads valid memory rather than a closed buffer.
    """

    def __init__(self, slots: int, threads: int = 1) -> None:
        self.slots, self.threads = slots, threads
        self._numbers_per_slot = _HEADER_FIELDS + threads * _THREAD_FIELDS
        self._slot_size = self._numbers_per_slot * 8 + MESSAGE_SIZE
        self._mmap = mmap.mmap(-1, slots * self._slot_size)
        self._numbers = memoryview(self._mmap).cast("d")

    def _base(self, slot: int) -> int:
        if not 1 <= slot <= self.slots:
            raise IndexError(f"scoreboard slot {slot} out of 1..{self.slots}")
        return (slot - 1) * (self._slot_size // 8)

    # -- master side -------------------------------------------------------

    def reset(self, slot: int, now: float) -> None:
        """Prepare a slot for a worker about to be forked: BOOTING, with a fresh tick."""
        base = self._base(slot)
        numbers = self._numbers
        for index in range(base, base + self._numbers_per_slot):
            numbers[index] = 0.0
        numbers[base + STATE] = BOOTING
        numbers[base + TICK] = now
        self.write_message(slot, "")

    def view(self, slot: int) -> SlotView:
        numbers, base = self._numbers, self._base(slot)
        tick, requests, busy, oldest, connections = numbers[base + TICK], 0, 0, 0.0, 0
        for thread in range(self.threads):
            record = base + _HEADER_FIELDS + thread * _THREAD_FIELDS
            tick = max(tick, numbers[record + T_TICK])
            requests += int(numbers[record + T_REQUESTS])
            connections += int(numbers[record + T_CONNECTIONS])
            if numbers[record + T_BUSY]:
                busy += 1
                start = numbers[record + T_REQUEST_START]
                if start and (not oldest or start < oldest):
                    oldest = start
        return SlotView(int(numbers[base + PID]), int(numbers[base + STATE]), tick,
                        int(numbers[base + RETIRE]), bool(numbers[base + STOP_POOL]), requests, busy, oldest,
                        connections)

    def connection_load(self) -> tuple[int, int]:
        """(connections held, accept threads serving) over the pool: what a parking thread decides
        whether to accept from (intake_process.py).

        A few hundred reads of shared memory; a slot counts while its worker
        is IDLE (a busy worker's state is IDLE with a busy thread).
        """
        numbers, total, threads = self._numbers, 0, 0
        step = self._slot_size // 8
        for base in range(0, self.slots * step, step):
            if numbers[base + STATE] != IDLE:
                continue
            for record in range(base + _HEADER_FIELDS, base + self._numbers_per_slot, _THREAD_FIELDS):
                total += int(numbers[record + T_CONNECTIONS])
                threads += 1
        return total, threads

    def adopters(self, except_slot: int) -> int:
        """How many workers other than except_slot take (or, booting or spare, will take) connections
        handed over: of the newest generation (not OUTDATED), not retiring alone, not at their request cap."""
        numbers, count, step = self._numbers, 0, self._slot_size // 8
        for slot in range(1, self.slots + 1):
            base = (slot - 1) * step
            if (slot != except_slot and numbers[base + STATE] in (BOOTING, IDLE, SPARE) and not numbers[base + OUTDATED]
                    and not numbers[base + ALONE] and numbers[base + RETIRE] != EXHAUSTED):
                count += 1
        return count

    def durations(self, slot: int) -> tuple[list[int], float]:
        """(count per duration bucket, the +Inf bucket last; sum of the durations) over the slot's threads."""
        numbers, base = self._numbers, self._base(slot)
        counts, seconds = [0] * (len(DURATION_BOUNDS) + 1), 0.0
        for thread in range(self.threads):
            record = base + _HEADER_FIELDS + thread * _THREAD_FIELDS
            seconds += numbers[record + T_SECONDS]
            for bucket in range(len(counts)):
                counts[bucket] += int(numbers[record + T_BUCKETS + bucket])
        return counts, seconds

    def log_dropped(self, slot: int) -> int:
        return int(self._numbers[self._base(slot) + LOG_DROPPED])

    def message(self, slot: int) -> str:
        start = self._message_start(slot)
        return bytes(self._mmap[start:start + MESSAGE_SIZE]).split(b"\0", 1)[0].decode("utf-8", "replace")

    def _message_start(self, slot: int) -> int:
        return self._base(slot) * 8 + self._numbers_per_slot * 8

    # -- worker side -------------------------------------------------------

    def writer(self, slot: int) -> "SlotWriter":
        """The view a worker's main thread keeps on the header of its own slot."""
        return SlotWriter(self._numbers, self._base(slot))

    def thread_writer(self, slot: int, thread: int) -> "ThreadWriter":
        """The hot-path view one accept thread keeps on its own record."""
        if not 0 <= thread < self.threads:
            raise IndexError(f"thread record {thread} out of 0..{self.threads - 1}")
        return ThreadWriter(self._numbers, self._base(slot) + _HEADER_FIELDS + thread * _THREAD_FIELDS)

    def write_message(self, slot: int, text: str) -> None:
        data = text.encode("utf-8")[:MESSAGE_SIZE - 1]
        start = self._message_start(slot)
        self._mmap[start:start + MESSAGE_SIZE] = data.ljust(MESSAGE_SIZE, b"\0")


class SlotWriter:
    """The header of one worker's slot: state, liveness, retire and stop requests."""

    __slots__ = ("_numbers", "_base")

    def __init__(self, numbers: "memoryview[float]", base: int) -> None:
        self._numbers = numbers
        self._base = base

    def set(self, field: int, value: float) -> None:
        self._numbers[self._base + field] = value

    def get(self, field: int) -> float:
        return self._numbers[self._base + field]

    def tick(self, now: float) -> None:
        self._numbers[self._base + TICK] = now


class ThreadWriter:
    """One accept thread's record. Each method is a few stores into shared memory."""

    __slots__ = ("_numbers", "_base")

    def __init__(self, numbers: "memoryview[float]", base: int) -> None:
        self._numbers = numbers
        self._base = base

    def begin_request(self, now: float) -> None:
        numbers, base = self._numbers, self._base
        numbers[base + T_REQUEST_START] = now
        numbers[base + T_BUSY] = 1.0

    def end_request(self, now: float, requests: int, observe: bool = True) -> None:
        """The request in hand ended: counted (requests is the thread's new total) and, if observe and
        one was begun, its duration recorded in the histogram."""
        numbers, base = self._numbers, self._base
        start = numbers[base + T_REQUEST_START]
        if start and observe:
            duration = now - start
            numbers[base + T_SECONDS] += duration
            numbers[base + T_BUCKETS + bisect.bisect_left(DURATION_BOUNDS, duration)] += 1
        numbers[base + T_REQUESTS] = requests
        numbers[base + T_REQUEST_START] = 0.0
        numbers[base + T_TICK] = now
        numbers[base + T_BUSY] = 0.0

    def tick(self, now: float) -> None:
        self._numbers[self._base + T_TICK] = now

    def set_connections(self, count: int) -> None:
        self._numbers[self._base + T_CONNECTIONS] = count
