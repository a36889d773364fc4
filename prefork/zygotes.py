"""The master's zygotes: one per generation of code, each forking that generation's workers.

The master forks a zygote (zygote.py) and asks it for each worker; where the
fork happens is this module's business, never the planner's. The rules it
keeps, mechanically:

- The current generation has a zygote: one is forked at start, and again
  when it dies (after the boot-failure backoff: a zygote that cannot import
  the handler, or dies, counts as a boot failure). Its workers keep serving.
- Until the current generation's zygote is ready, no worker can be forked:
  available_after() tells the planner so through the snapshot.
- A reload forks a zygote for the next generation. The generation moves on
  only when it is ready, so the planner replaces workers only once the new
  code has loaded; if it fails to load, nothing changes and the log says why.
- A zygote of an older generation exits when its last worker is gone.

A request is synchronous: the master waits for the answer, which takes tens
of microseconds when the zygote had the next worker forked ahead, a double
fork when it had not (zygote.py has the figures), and at most ANSWER_TIMEOUT
when the zygote is stuck (stopped, deadlocked in an at-fork hook): then it is
killed, with the worker it may have been handing over.

Races, and why they cannot bite:
- The zygote answers only once the worker is the master's child, and the
  master registers it before it next reaps, so a worker that dies at once is
  reaped as a worker, never as an unknown child.
- The master is a child subreaper, so it also adopts orphans of its workers'
  own children; it reaps every child (waitpid(-1), as PID 1 does) and hands
  the exits of zygotes here (claim). In a program that serves from a thread
  that means it may reap the program's other children too: zygotes are for
  a master that owns its process, as `prefork serve` does.
"""

import json
import logging
import math
import os
import select
import selectors
import signal
import socket
import time
import warnings

from . import zygote
from .errors import SpawnError
from .signals import signal_name
from .worker_process import FORK_BLOCKED_SIGNALS

log = logging.getLogger("prefork")

ANSWER_TIMEOUT = 5.0     # seconds a zygote gets to answer a request before it is taken for stuck
STOP_TIMEOUT = 2.0       # seconds a zygote gets to exit when the master finishes, before SIGKILL


class ZygoteHandle:
    """The master's view of one zygote process."""

    def __init__(self, pid, generation, sock, why):
        self.pid = pid
        self.generation = generation
        self.sock = sock                   # our end; None once it closed
        self.pidfd = None
        self.state = "booting"             # "booting", "ready", "retiring" (an older generation's), "stopping"
        self.why = why                     # the reload that asked for it, or None
        self.failure = None                # what it said when its import failed
        self.counted = False               # its failure was counted already (a request it left unanswered)
        self.born = time.monotonic()
        self.started_at = time.time()


class Zygotes:
    """The zygotes of one master, oldest first. See the module docstring for the rules."""

    def __init__(self, pool, selector, close_master_fds):
        self.pool = pool
        self.selector = selector
        self.close_master_fds = close_master_fds
        self.zygotes = []
        self.subreaper = zygote.prctl(zygote.PR_SET_CHILD_SUBREAPER, 1)
        if not self.subreaper:
            log.warning("cannot become a child subreaper: workers forked by the zygote will not be ours")

    # -- starting and reloading ------------------------------------------------

    def start(self, setup, generation, why=None):
        """Fork a zygote for generation; it imports the handler and tells us when it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED_SIGNALS)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            ours.close()
            theirs.close()
            self.pool.boot_failed("zygote", f"cannot fork a zygote: {exc.strerror}")
            return None
        if pid == 0:
            ours.close()
            zygote.run(theirs, setup, generation, self.close_master_fds)    # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        theirs.close()
        ours.setblocking(False)
        handle = ZygoteHandle(pid, generation, ours, why)
        self.selector.register(ours, selectors.EVENT_READ)
        if hasattr(os, "pidfd_open"):
            handle.pidfd = os.pidfd_open(pid)
            self.selector.register(handle.pidfd, selectors.EVENT_READ)
        self.zygotes.append(handle)
        log.info("zygote %s forked for generation %s: importing the handler", pid, generation)
        return handle

    def reload(self, setup, generation, why):
        """Load the code anew in a zygote for generation; a newer one still loading is replaced."""
        for handle in self.zygotes:
            if handle.generation >= generation and handle.state == "booting":
                self._stop(handle, signal.SIGKILL)
        log.info("%s: loading the handler anew in a zygote for generation %s", why, generation)
        self.start(setup, generation, why)

    # -- each pass of the master's loop --------------------------------------------

    def tend(self, setup, generation, stopping, now):
        """Read what zygotes said, reap them, stop old ones, start the missing one.

        Returns (generation, why) when a reload's zygote became ready: the
        master moves on to that generation. Otherwise None.
        """
        self.reap()
        loaded = None
        for handle in self.zygotes:
            if handle.sock is not None:
                self._read(handle)
            if handle.state == "ready" and handle.generation > generation and handle.why:
                loaded = (handle.generation, handle.why)
                handle.why = None
        current = loaded[0] if loaded else generation
        serving = {worker.generation for worker in self.pool}
        for handle in self.zygotes:
            if handle.generation < current and handle.state == "ready":
                handle.state = "retiring"
            if handle.generation < current and handle.state != "stopping" and handle.generation not in serving:
                log.info("zygote %s of generation %s: its last worker is gone, stopping it",
                         handle.pid, handle.generation)
                self._stop(handle, signal.SIGTERM)
        if not stopping and self.current(current) is None and now >= self.pool.spawn_after:
            self.start(setup, current)
        return loaded

    def current(self, generation, ready=False):
        """The zygote of that generation that is booting or ready (ready only, if ready), or None."""
        wanted = ("ready",) if ready else ("booting", "ready")
        return next((h for h in self.zygotes if h.generation == generation and h.state in wanted), None)

    def available_after(self, generation):
        """When a worker of generation can be forked, as far as zygotes go: now, or not until one is ready."""
        handle = self.current(generation)
        if handle is None:                # none yet: the pool's boot backoff says when one is forked
            return 0.0
        return 0.0 if handle.state == "ready" and handle.sock is not None else math.inf

    def _read(self, handle):
        while handle.sock is not None:
            data = _receive(handle.sock)
            if data is None:
                return
            if not data:                  # it closed its end: it is exiting, and reaping says how
                self._close_socket(handle)
                return
            word, _, rest = data.decode("utf-8", "replace").partition(" ")
            if word == "ready" and handle.state == "booting":
                handle.state = "ready"
                log.info("zygote %s ready: generation %s loaded in %.0f ms", handle.pid, handle.generation,
                         (time.monotonic() - handle.born) * 1000)
            elif word == "failed":
                handle.failure = rest
            else:
                log.warning("zygote %s said %r out of turn; ignoring it", handle.pid, data[:80])

    # -- forking workers ----------------------------------------------------------

    def fork_worker(self, worker, close_master_fds):
        """Ask the zygote of worker's generation for it (pool.spawn's fork); its pid, or SpawnError."""
        handle = self.current(worker.generation, ready=True)
        if handle is None or handle.sock is None:
            raise SpawnError(f"no zygote of generation {worker.generation} is ready")
        request = json.dumps({"index": worker.index, "slot": worker.slot, "generation": worker.generation,
                              "spare": worker.spare}).encode()
        answer = self._ask(handle, request)
        word, _, rest = answer.partition(" ")
        if word == "ok" and rest.isdigit():
            return int(rest)
        if word == "error":
            raise SpawnError(rest)
        # Silent, dead or talking nonsense: it may have handed the worker its slot already, and
        # then wrote its pid there first. Kill both, before anything reaps either (see zygote.py).
        handle.counted = True
        self._stop(handle, signal.SIGKILL)
        orphan = self.pool.board.view(worker.index).pid
        if orphan:
            _kill(orphan, signal.SIGKILL)
        message = answer or f"zygote {handle.pid} did not answer within {ANSWER_TIMEOUT:.0f} s: killed it"
        raise SpawnError(message)

    def _ask(self, handle, request):
        """Send a request and wait for the answer; '' when none came (timeout, or the zygote died)."""
        try:
            handle.sock.send(request)
        except OSError:
            return "the zygote is gone"
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([handle.sock], [], [], left)[0]:
                return ""
            data = _receive(handle.sock)
            if data is None:
                continue
            return data.decode("utf-8", "replace") if data else "the zygote died before it answered"

    # -- exits ----------------------------------------------------------------------

    def reap(self):
        """Collect zygotes that exited (when the pool's reaping did not: it hands them to claim())."""
        for handle in list(self.zygotes):
            try:
                pid, status = os.waitpid(handle.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = handle.pid, 0
            if pid:
                self._exited(handle, status)

    def claim(self, pid, status):
        """An exit the pool reaped with waitpid(-1): ours if it is a zygote's."""
        handle = next((h for h in self.zygotes if h.pid == pid), None)
        if handle is not None:
            self._exited(handle, status)
        return handle is not None

    def _exited(self, handle, status):
        if handle.sock is not None:
            self._read(handle)            # a "failed" it sent just before it went
        self._forget(handle)
        code = os.waitstatus_to_exitcode(status)
        how = f"signal {signal_name(-code)}" if code < 0 else f"exit code {code}"
        if handle.state in ("stopping", "retiring"):
            log.info("zygote %s of generation %s exited (%s)", handle.pid, handle.generation, how)
        elif handle.why:                  # a reload's zygote that never got ready: nothing changes
            log.error("%s: not reloading, the new code failed to load, the old workers keep serving: %s",
                      handle.why, handle.failure or f"the zygote died while importing it ({how})")
        elif handle.counted:
            pass
        elif handle.state == "booting":
            self.pool.boot_failed("zygote", handle.failure or f"the zygote died while importing the handler ({how})")
        else:
            log.error("zygote %s of generation %s died unexpectedly (%s); its workers keep serving, another "
                      "zygote follows", handle.pid, handle.generation, how)
            self.pool.back_off(f"the zygote died ({how})")

    def _stop(self, handle, signum):
        handle.state = "stopping"
        self._close_socket(handle)        # the end of its socket tells it to go, with its next worker
        _kill(handle.pid, signum)

    def _close_socket(self, handle):
        if handle.sock is not None:
            self.selector.unregister(handle.sock)
            handle.sock.close()
            handle.sock = None

    def _forget(self, handle):
        self._close_socket(handle)
        if handle.pidfd is not None:
            self.selector.unregister(handle.pidfd)
            os.close(handle.pidfd)
            handle.pidfd = None
        if handle in self.zygotes:
            self.zygotes.remove(handle)

    # -- the rest ---------------------------------------------------------------------

    def stats(self):
        """stats()["zygotes"]: each zygote's pid, generation, state and start time."""
        return [{"pid": h.pid, "generation": h.generation, "state": h.state, "started_at": h.started_at}
                for h in list(self.zygotes)]

    def close_in_child(self):
        """In a new zygote: close our ends of the other zygotes' sockets and their pidfds."""
        for handle in self.zygotes:
            if handle.sock is not None:
                handle.sock.close()
            if handle.pidfd is not None:
                os.close(handle.pidfd)

    def close(self):
        """The master is finishing: every zygote goes (with its next worker), and nothing is left to reap."""
        for handle in list(self.zygotes):
            if handle.state != "stopping":
                self._stop(handle, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for handle in list(self.zygotes):
            if handle.pidfd is not None:
                select.select([handle.pidfd], [], [], max(0.0, deadline - time.monotonic()))
            try:
                if not os.waitpid(handle.pid, os.WNOHANG)[0]:
                    _kill(handle.pid, signal.SIGKILL)
                    os.waitpid(handle.pid, 0)
            except ChildProcessError:
                pass
            self._forget(handle)
        _reap_adopted()
        if self.subreaper:
            zygote.prctl(zygote.PR_SET_CHILD_SUBREAPER, 0)


def _kill(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap_adopted():
    """Reap the children that exited already: next workers the zygotes let go, orphans we adopted."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def _receive(sock):
    """One message from a zygote: None if none is there yet, b"" if its end is closed or broken."""
    try:
        return sock.recv(zygote.MESSAGE_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""
