"""Runs in any process with a loop: how a loop asleep on a selector learns that something happened.

The **doorbell** is a non-blocking socketpair the loop sleeps on. Whoever has
news rings it: a signal handler (through ``signal.set_wakeup_fd``), a worker
(its write end is inherited), another thread calling ``shutdown()`` or
``scale()``. A ring carries no news: the news itself waits in the inbox or in
the scoreboard. So a ring that finds the buffer full (EAGAIN) loses nothing,
since a full buffer means a wake-up is already pending.

The **inbox** is a deque the loop drains once per pass. Signal handlers
append the signal number and nothing else (no logging, no reaping, no
locks: a handler runs between two bytecodes of whatever the main thread was
doing); other threads append command objects. deque.append is atomic.

Handlers can only be installed from the main thread: a loop run from another
thread gets no signals (the README's rule for embedded pools). Why not
signalfd: docs/design.md, "Signals".
"""

import collections
import select
import os
import signal
import socket
import threading


class Doorbell:
    """A wake-up socket: ring() from anywhere, never blocking, never raising."""

    def __init__(self):
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def write_fd(self):
        """The fd workers inherit and write to (os.write(fd, b"w"))."""
        return self._writer.fileno()

    def ring(self):
        ring(self._writer.fileno())

    def drain(self):
        try:
            while self.reader.recv(4096):
                pass
        except OSError:        # empty (BlockingIOError), or closed under us while finishing
            pass

    def close(self):
        self.reader.close()
        self._writer.close()


def ring(fd):
    """Write one wake-up byte to fd: a full buffer already means "wake up"; a closed one, nobody listens."""
    try:
        os.write(fd, b"w")
    except OSError:
        pass


class SignalInbox:
    """The signals a loop handles, and commands from other threads, queued for the loop."""

    def __init__(self, doorbell):
        self.doorbell = doorbell
        self._queue = collections.deque()
        self._old_handlers = {}
        self._old_wakeup_fd = None

    def install(self, signals, reset_in_children=False):
        """Handle ``signals`` (numbers) by queuing them; only from the main thread. Returns whether it did.

        reset_in_children: a process forked from this one (socketserver's
        ForkingMixIn) gets the previous handlers back, so that it reacts to
        signals as it would have without us.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in signals:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)
        self._old_wakeup_fd = signal.set_wakeup_fd(self.doorbell.write_fd(), warn_on_full_buffer=False)
        if reset_in_children:
            _reset_after_fork.add(self)
        return True

    def install_handler(self, signum, handler):
        """Also install handler for signum (main thread only), to be restored with the others."""
        self._old_handlers[signum] = signal.signal(signum, handler)

    def restore(self):
        """Put back the handlers and wake-up fd that were there before install()."""
        _reset_after_fork.discard(self)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
        self._old_handlers, self._old_wakeup_fd = {}, None

    def post(self, item):
        """From any thread: queue an item (a command) for the loop and wake it."""
        self._queue.append(item)
        self.doorbell.ring()

    def take(self):
        """Everything queued so far, oldest first: signal numbers and posted items."""
        items = []
        while self._queue:
            items.append(self._queue.popleft())
        return items

    def _on_signal(self, signum, frame):
        self._queue.append(signum)          # set_wakeup_fd has already written to the doorbell


_reset_after_fork = set()


def _reset_in_child():
    for inbox in list(_reset_after_fork):
        inbox.restore()


os.register_at_fork(after_in_child=_reset_in_child)


def run_pending_handlers():
    """Run the Python handlers of signals received but not yet handled.

    pthread_sigmask() checks for pending signals on its way out; with an
    empty set it changes nothing else.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, ())


def default_sigchld():
    """Reset SIGCHLD to its default if the launcher left it ignored; return what to restore.

    With SIGCHLD ignored the kernel reaps children itself: waitpid() then
    finds nothing, and a SIGKILLed worker would be reported as "exit code 0".
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        return signal.SIG_IGN
    return None


def signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:            # a real-time signal without a name
        return str(signum)


def exit_text(code):
    """A child's exit as a person reads it: "exit code 3" or "signal SIGKILL" (code as subprocess gives it)."""
    return f"signal {signal_name(-code)}" if code < 0 else f"exit code {code}"


def wait_readable(fd, timeout):
    """Whether fd (a number or an object with fileno()) is readable within timeout seconds.

    poll(), not select(): select() fails on descriptors numbered 1024 and up,
    which a large pool with a raised RLIMIT_NOFILE reaches.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))
