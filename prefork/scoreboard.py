"""The scoreboard: an anonymous shared mmap with one slot per worker.

Workers write their own slot on every request with no system call (a store
into shared memory, and time.monotonic(), which Linux serves from the vDSO).
The master reads every slot to check liveness and to answer stats(); nothing
else crosses between the processes per request.

A slot is 256 bytes: eight float64 fields (an 8-byte aligned store is atomic
on every platform we run on, so a reader never sees half a value) followed
by a short UTF-8 text the worker leaves when it fails to boot.
"""

import mmap

# Worker states, stored in the STATE field. A SPARE is booted but not accepting yet.
FREE, BOOTING, IDLE, BUSY, STOPPING, SPARE = range(6)
STATE_NAMES = {FREE: "free", BOOTING: "booting", IDLE: "idle", BUSY: "busy", STOPPING: "stopping", SPARE: "spare"}

# Field indexes within a slot, in float64 units.
PID, STATE, REQUESTS, TICK, REQUEST_START, RETIRE = range(6)
_FIELDS_PER_SLOT = 8          # 64 bytes of numbers (two spare)
_NUMBERS_SIZE = _FIELDS_PER_SLOT * 8
MESSAGE_SIZE = 192
SLOT_SIZE = _NUMBERS_SIZE + MESSAGE_SIZE


class Scoreboard:
    """Shared memory for ``slots`` workers, numbered 1..slots.

    Create it in the master before forking; every child shares the same
    pages (MAP_SHARED | MAP_ANONYMOUS).
    """

    def __init__(self, slots):
        self.slots = slots
        self._mmap = mmap.mmap(-1, slots * SLOT_SIZE)
        self._numbers = memoryview(self._mmap).cast("d")

    def close(self):
        self._numbers.release()
        self._mmap.close()

    def _base(self, slot):
        if not 1 <= slot <= self.slots:
            raise IndexError(f"scoreboard slot {slot} out of 1..{self.slots}")
        return (slot - 1) * (SLOT_SIZE // 8)

    # -- master side -------------------------------------------------------

    def reset(self, slot, now):
        """Prepare a slot for a worker about to be forked."""
        base = self._base(slot)
        self._numbers[base:base + _FIELDS_PER_SLOT] = memoryview(bytes(_NUMBERS_SIZE)).cast("d")
        self._numbers[base + STATE] = BOOTING
        self._numbers[base + TICK] = now
        self.write_message(slot, "")

    def read(self, slot, field):
        return self._numbers[self._base(slot) + field]

    def message(self, slot):
        start = (slot - 1) * SLOT_SIZE + _NUMBERS_SIZE
        return bytes(self._mmap[start:start + MESSAGE_SIZE]).split(b"\0", 1)[0].decode("utf-8", "replace")

    # -- worker side -------------------------------------------------------

    def writer(self, slot):
        """The hot-path view a worker keeps on its own slot."""
        return SlotWriter(self._numbers, self._base(slot))

    def write_message(self, slot, text):
        data = text.encode("utf-8")[:MESSAGE_SIZE - 1]
        start = (slot - 1) * SLOT_SIZE + _NUMBERS_SIZE
        self._mmap[start:start + MESSAGE_SIZE] = data.ljust(MESSAGE_SIZE, b"\0")


class SlotWriter:
    """One worker's slot. Each method is a few stores into shared memory."""

    __slots__ = ("_numbers", "_base")

    def __init__(self, numbers, base):
        self._numbers = numbers
        self._base = base

    def set(self, field, value):
        self._numbers[self._base + field] = value

    def begin_request(self, now):
        numbers, base = self._numbers, self._base
        numbers[base + REQUEST_START] = now
        numbers[base + STATE] = BUSY

    def end_request(self, now, requests):
        numbers, base = self._numbers, self._base
        numbers[base + REQUESTS] = requests
        numbers[base + REQUEST_START] = 0.0
        numbers[base + TICK] = now
        numbers[base + STATE] = IDLE

    def tick(self, now):
        self._numbers[self._base + TICK] = now
