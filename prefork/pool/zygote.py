"""Runs in the master: its handles on the zygotes, one per generation of code, and their requests.

The master forks a zygote (zygote_process.py) and asks it for each worker;
this module carries that out and reports what it sees: who is booting, ready
or stopping, and what an exit means (exits.zygote_exit). When to start, adopt,
stop or kill a zygote is the planner's decision (planner.py, rule 6).

A request is synchronous: the answer takes tens of microseconds when the
zygote had the next worker forked ahead, a double fork when it had not, and at
most ANSWER_TIMEOUT when the zygote is stuck: then it is killed, with the
worker it may have been handing over. docs/design.md has the races.
"""

import json
import logging
import os
import selectors
import signal
import socket
import time

from prefork.errors import SpawnError
from prefork.pool import exits, forking, zygote_process
from prefork.pool.snapshot import ZygoteView
from prefork.pool.states import ZygoteExit, ZygoteState
from prefork.pool.worker_table import send_signal
from prefork.signals import exit_text, wait_readable

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
        self.state = ZygoteState.BOOTING
        self.why = why                     # the reload that asked for it, or ""
        self.failure = None                # why it failed to load: what it said, or the planner's kill
        self.counted = False               # its failure was counted already (a request it left unanswered)
        self.killed_loading = False        # killed while importing (the boot timeout): a failure to load
        self.born = time.monotonic()
        self.started_at = time.time()

    def view(self):
        return ZygoteView(self.pid, self.generation, self.state, self.born)


class Zygotes:
    """The zygotes of one master, oldest first: forked, asked for workers, stopped and reaped here.

    on_reload_failed(why, message) is called when a reload's zygote goes
    without having loaded the code; the master reports the reload as failed.
    """

    def __init__(self, pool, selector, close_master_fds, on_reload_failed):
        self.pool = pool
        self.selector = selector
        self.close_master_fds = close_master_fds
        self.on_reload_failed = on_reload_failed
        self.zygotes = []
        self.subreaper = forking.prctl(forking.PR_SET_CHILD_SUBREAPER, 1)
        if not self.subreaper:
            log.warning("cannot become a child subreaper: workers forked by the zygote will not be ours")

    # -- what the planner decides ------------------------------------------------------

    def start(self, setup, generation, why=""):
        """Fork a zygote for generation; it imports the handler and tells us when it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def child():
            ours.close()
            zygote_process.run(theirs, setup, generation, self.close_master_fds)    # never returns
        try:
            pid = forking.fork(child)
        except OSError as exc:
            ours.close()
            self.pool.boot_failed("zygote", f"cannot fork a zygote: {exc.strerror}", generation)
            return None
        finally:
            theirs.close()
        ours.setblocking(False)
        handle = ZygoteHandle(pid, generation, ours, why)
        self.selector.register(ours, selectors.EVENT_READ)
        if hasattr(os, "pidfd_open"):
            handle.pidfd = os.pidfd_open(pid)
            self.selector.register(handle.pidfd, selectors.EVENT_READ)
        self.zygotes.append(handle)
        if why:
            log.info("%s: loading the handler anew in zygote %s for generation %s", why, pid, generation)
        else:
            log.info("zygote %s forked for generation %s: importing the handler", pid, generation)
        return handle

    def stop(self, pid, signum, detail, failure=""):
        """Tell a zygote to go (SIGTERM) or kill it (SIGKILL); failure: why it did not load."""
        handle = next((h for h in self.zygotes if h.pid == pid), None)
        if handle is None:
            return
        if failure:
            handle.failure, handle.killed_loading = failure, handle.state == ZygoteState.BOOTING
            log.warning("zygote %s of generation %s %s: killing it", pid, handle.generation, failure)
        else:
            log.info("zygote %s of generation %s: %s, stopping it", pid, handle.generation, detail)
        self._stop(handle, signum)

    # -- each pass of the master's loop --------------------------------------------

    def gather(self, current_generation, loading):
        """Reap zygotes that exited and read what the others said; their views for the snapshot."""
        for handle in list(self.zygotes):
            try:
                pid, status = os.waitpid(handle.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = handle.pid, 0
            if pid:
                self._exited(handle, status, current_generation, loading)
        for handle in self.zygotes:
            if handle.sock is not None:
                self._read(handle)
        return tuple(h.view() for h in self.zygotes)

    def claim(self, pid, status, current_generation, loading):
        """An exit the pool reaped with waitpid(-1): ours if it is a zygote's."""
        handle = next((h for h in self.zygotes if h.pid == pid), None)
        if handle is not None:
            self._exited(handle, status, current_generation, loading)
        return handle is not None

    def _read(self, handle):
        while handle.sock is not None:
            data = _receive(handle.sock)
            if data is None:
                return
            if not data:                  # it closed its end: it is exiting, and reaping says how
                self._close_socket(handle)
                return
            word, _, rest = data.decode("utf-8", "replace").partition(" ")
            if word == "ready" and handle.state == ZygoteState.BOOTING:
                handle.state = ZygoteState.READY
                log.info("zygote %s ready: generation %s loaded in %.0f ms", handle.pid, handle.generation,
                         (time.monotonic() - handle.born) * 1000)
            elif word == "failed":
                handle.failure = rest
            else:
                log.warning("zygote %s said %r out of turn; ignoring it", handle.pid, data[:80])

    def _exited(self, handle, status, current_generation, loading):
        if handle.sock is not None:
            self._read(handle)            # a "failed" it sent just before it went
        state = ZygoteState.BOOTING if handle.killed_loading else handle.state
        self._forget(handle)
        code = os.waitstatus_to_exitcode(status)
        how = exit_text(code)
        meaning = exits.zygote_exit(state, handle.generation, current_generation, loading, handle.counted)
        if meaning == ZygoteExit.EXPECTED:
            log.info("zygote %s of generation %s exited (%s)", handle.pid, handle.generation, how)
        elif meaning == ZygoteExit.RELOAD_FAILED:
            message = handle.failure or f"the zygote died while importing it ({how})"
            log.error("%s: not reloading, the new code failed to load, the old workers keep serving: %s",
                      handle.why or "reload", message)
            self.on_reload_failed(handle.why, message)
        elif meaning == ZygoteExit.BOOT_FAILURE:
            self.pool.boot_failed("zygote", handle.failure or f"the zygote died while importing the handler "
                                            f"({how})", handle.generation)
        elif meaning == ZygoteExit.DIED:
            log.error("zygote %s of generation %s died unexpectedly (%s); its workers keep serving, another "
                      "zygote follows", handle.pid, handle.generation, how)
            self.pool.count_failure(f"the zygote died ({how})", handle.generation)

    # -- forking workers ----------------------------------------------------------

    def fork_worker(self, worker, close_master_fds):
        """Ask the zygote of worker's generation for it (Pool.spawn's fork); its pid, or SpawnError."""
        handle = next((h for h in self.zygotes if h.generation == worker.generation and h.state == ZygoteState.READY
                       and h.sock is not None), None)
        if handle is None:
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
        # then wrote its pid there first. Kill both, before anything reaps either (docs/design.md).
        handle.counted = True
        self._stop(handle, signal.SIGKILL)
        orphan = self.pool.board.view(worker.index).pid
        if orphan:
            send_signal(orphan, None, signal.SIGKILL)
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
            if left <= 0 or not wait_readable(handle.sock, left):
                return ""
            data = _receive(handle.sock)
            if data is None:
                continue
            return data.decode("utf-8", "replace") if data else "the zygote died before it answered"

    # -- the rest ---------------------------------------------------------------------

    def _stop(self, handle, signum):
        handle.state = ZygoteState.STOPPING
        self._close_socket(handle)        # the end of its socket tells it to go, with its next worker
        send_signal(handle.pid, handle.pidfd, signum)

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

    def signal_all(self, signum):
        """Send every zygote a signal (SIGUSR1: reopen the log, and pass it on to the next worker)."""
        for handle in self.zygotes:
            if handle.state != ZygoteState.STOPPING:
                send_signal(handle.pid, handle.pidfd, signum)

    def stats(self, current_generation):
        """stats()["zygotes"]: each zygote's pid, generation, state and start time."""
        def state(h):
            return "retiring" if h.state == ZygoteState.READY and h.generation < current_generation else h.state.value
        return [{"pid": h.pid, "generation": h.generation, "state": state(h), "started_at": h.started_at}
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
            if handle.state != ZygoteState.STOPPING:
                self._stop(handle, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for handle in list(self.zygotes):
            if handle.pidfd is not None:
                wait_readable(handle.pidfd, max(0.0, deadline - time.monotonic()))
            try:
                if not os.waitpid(handle.pid, os.WNOHANG)[0]:
                    send_signal(handle.pid, handle.pidfd, signal.SIGKILL)
                    os.waitpid(handle.pid, 0)
            except ChildProcessError:
                pass
            self._forget(handle)
        _reap_adopted()
        if self.subreaper:
            forking.prctl(forking.PR_SET_CHILD_SUBREAPER, 0)


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
        return sock.recv(zygote_process.MESSAGE_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""
