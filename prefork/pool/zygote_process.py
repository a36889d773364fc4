"""Runs in the zygote (--preload): imports the handler once, then forks workers on request.

The zygote drops privileges (--user) before it imports anything, imports the
handler, freezes its heap (gc.freeze) and waits for the master's requests. It
keeps the *next worker* forked ahead of time by a double fork, so that the
worker is the master's child (the master is a subreaper) and a request only
hands it its slot; that process then becomes the worker (worker_process.py).
Why this shape, what it costs and the races it avoids: docs/design.md,
"--preload is a zygote" and "A zygote's workers are the master's children".

The messages, one per SEQPACKET datagram:
  zygote -> master   ready | failed MESSAGE           once, after the import
  master -> zygote   {"index", "slot", "generation", "spare"} (JSON)
  zygote -> master   ok PID | error MESSAGE          the answer to each request
The master closing its end (or SIGTERM, SIGQUIT) tells the zygote to go. The
master's other signals do nothing here, but SIGUSR1: reopen the log, and pass
it on to the next worker. It dies with the master (PR_SET_PDEATHSIG).
"""

import faulthandler
import gc
import importlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time

import setproctitle

from prefork import logs
from prefork.errors import AppLoadError, PreforkError, WorkerExit, WorkerSignal
from prefork.listeners import held_connections
from prefork.pool import forking, scoreboard
from prefork.pool.forking import FORK_BLOCKED_SIGNALS, PR_SET_PDEATHSIG, exit_child, prctl
from prefork.pool.worker import Worker
from prefork.signals import wait_readable

log = logging.getLogger("prefork")

NEXT_WORKER_DELAY = 0.05     # seconds between a hand-off and forking the next worker ahead
MESSAGE_SIZE = 4096


def run(sock, setup, generation, close_master_fds):
    """The zygote's entry point, right after the master's fork. Never returns."""
    code = WorkerExit.CRASH
    try:
        code = Zygote(sock, setup, generation).run(close_master_fds)
    except SystemExit:                # SIGTERM or SIGQUIT: leave
        code = WorkerExit.OK
    except BaseException:
        log.exception("zygote of generation %s crashed", generation)
    finally:
        exit_child(code)


class NextWorker:
    """The zygote's handle on the next worker it forked ahead: its pid and the socket that hands it a slot."""

    def __init__(self, pid, sock):
        self.pid, self.sock = pid, sock


class Zygote:
    """Everything the zygote does; lives only in the zygote (and, copied by fork, in its workers)."""

    def __init__(self, sock, setup, generation):
        self.sock = sock                  # our end of the socketpair with the master
        self.setup = setup                # the master's PoolSetup, as it was when we were forked
        self.generation = generation
        self.next_worker = None
        self.fork_next_at = None          # when to fork the next worker ahead, if none is waiting
        self.stopping = False
        self.reopen_requested = False
        self.notice_r = self.notice_w = None   # the wake-up fd: a signal came

    def run(self, close_master_fds):
        close_master_fds()
        try:
            self._set_up_process()
        except PreforkError as exc:       # the privilege drop: nothing of the application may run
            self._tell(f"failed {exc}")
            return WorkerExit.BOOT_ERROR
        if not self._load_handler():
            return WorkerExit.APP_LOAD_ERROR
        self._fork_next_worker_ahead()    # before "ready": the master's first request finds it waiting
        self._tell("ready")
        try:
            self._serve_requests()
        finally:
            self._let_next_worker_go()
        return WorkerExit.OK

    # -- boot ------------------------------------------------------------------

    def _set_up_process(self):
        self.notice_r, self.notice_w = os.pipe()
        os.set_blocking(self.notice_r, False)
        os.set_blocking(self.notice_w, False)
        signal.set_wakeup_fd(self.notice_w, warn_on_full_buffer=False)     # replaces the master's, inherited
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGQUIT, self._on_stop)
        forking.handle_masters_signals()
        signal.signal(signal.SIGUSR1, self._on_reopen_logs)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        setproctitle.setproctitle(f"prefork: zygote [{self.setup.name}]")
        # The code may be newer than the master's view of the directories. Done as root: on 3.13 it
        # imports importlib.metadata, which the --user may not be allowed to read.
        importlib.invalidate_caches()
        if self.setup.credentials is not None:
            self.setup.credentials.drop()             # before any of the application's code runs
        # Our parent is the master's thread that forked us: die with it (set after the drop, which
        # clears it), and check it did not die before prctl took effect.
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != self.setup.master_pid:
            raise SystemExit(WorkerExit.OK)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_BLOCKED_SIGNALS)   # blocked by the master's fork

    def _on_reopen_logs(self, signum, frame):
        self.reopen_requested = True          # done in the loop: a logging lock may be held right now

    def _reopen_logs(self):
        """After a log rotation: our own log, then the next worker's (it handles SIGUSR1 once a worker)."""
        self.reopen_requested = False
        try:
            logs.reopen()
        except OSError as exc:
            log.warning("zygote %s cannot reopen its log file: %s", os.getpid(), exc)
        if self.next_worker is not None:
            try:
                os.kill(self.next_worker.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass

    def _on_stop(self, signum, frame):
        self.stopping = True
        raise SystemExit(WorkerExit.OK)

    def _load_handler(self):
        """Import the handler for every server, then freeze the heap; False (and the master told why) if not."""
        setup = self.setup
        before = set(held_connections())
        try:
            handler = setup.load_handler()
        except AppLoadError as exc:
            message = str(exc)
        except BaseException as exc:      # sys.exit() or a KeyboardInterrupt at import time
            if self.stopping:
                raise
            message = f"importing the handler raised {type(exc).__name__}: {exc}"
        else:
            message = None
        if message is not None:
            self._tell("failed " + message)
            return False
        for server in setup.servers:
            server.RequestHandlerClass = handler
        setup.load_handler = None         # loaded: our workers must not import it again
        if threading.active_count() > 1:
            log.warning("the handler's import started %s thread(s) in the zygote: its workers are forked from "
                        "it, and a lock one of them holds at fork time stays locked in the worker",
                        threading.active_count() - 1)
        held = [peer for peer in held_connections() if peer not in before]     # not systemd's journal stream
        if held:
            log.warning("the handler's import opened %s connection(s) in the zygote, which every worker forked from "
                        "it would share (their bytes interleaved): %s; open them in a post_fork hook, or on first "
                        "use in the worker", len(held), ", ".join(held))
        # Out of the collector's reach from now on: the pages of these objects stay shared with
        # every worker instead of being copied when a collection in the worker touches them.
        gc.freeze()
        return True

    # -- requests ------------------------------------------------------------------

    def _serve_requests(self):
        """Answer the master's requests until it closes its end; fork the next worker ahead meanwhile."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.notice_r, select.POLLIN)
        while True:
            timeout = None
            if self.next_worker is None and self.fork_next_at is not None:
                timeout = max(0, (self.fork_next_at - time.monotonic()) * 1000)
            ready = {fd for fd, _ in poller.poll(timeout)}
            if self.notice_r in ready:
                _drain(self.notice_r)
                if self.reopen_requested:
                    self._reopen_logs()
            if self.sock.fileno() in ready:
                request = self.sock.recv(MESSAGE_SIZE)
                if not request:
                    return                # the master is done with us
                self._tell(self._hand_off(json.loads(request)))
            elif not ready and self.next_worker is None:
                self._fork_next_worker_ahead()

    def _fork_next_worker_ahead(self):
        self.fork_next_at = None
        try:
            self.next_worker = self._fork_next_worker()
        except OSError as exc:            # out of processes or memory: try again when asked
            log.warning("zygote: cannot fork the next worker ahead: %s", exc.strerror)

    def _hand_off(self, request):
        """Turn the next worker into the worker the master asked for; the answer for the master."""
        header = self.setup.board.writer(request["index"])
        try:
            for attempt in (1, 2):
                nascent = self.next_worker or self._fork_next_worker()
                self.next_worker = None
                # In its slot before it gets the request: should we die before answering, the
                # master finds the pid there and does not leave that worker running unsupervised.
                header.set(scoreboard.PID, nascent.pid)
                try:
                    nascent.sock.send(json.dumps(request).encode())
                    break
                except OSError:           # it died while it waited (an OOM kill, say): fork another
                    header.set(scoreboard.PID, 0)
                    if attempt == 2:
                        raise
                finally:
                    nascent.sock.close()
        except OSError as exc:
            return f"error cannot fork a worker: {exc.strerror}"
        self.fork_next_at = time.monotonic() + NEXT_WORKER_DELAY
        return f"ok {nascent.pid}"

    def _fork_next_worker(self):
        """Double-fork the next worker; when this returns it is the master's child, asleep. OSError if not."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        started = time.perf_counter()
        try:
            middle = forking.fork(lambda: self._fork_and_leave(ours, theirs))
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()                               # in the zygote (the middle process never gets here)
        _, status = os.waitpid(middle, 0)
        try:
            pid = int(ours.recv(64, socket.MSG_DONTWAIT) or 0)
        except (BlockingIOError, ValueError):
            pid = 0
        if not pid:
            ours.close()
            code = os.waitstatus_to_exitcode(status)
            raise OSError(code if code > 0 else 0, os.strerror(code) if code > 0 else f"exit status {code}")
        log.debug("zygote: next worker forked ahead (pid %s) in %.2f ms", pid, (time.perf_counter() - started) * 1000)
        return NextWorker(pid, ours)

    def _fork_and_leave(self, ours, theirs):
        """The middle process: fork the next worker, send its pid to the zygote, exit. Never returns."""
        code = 1
        try:
            pid = forking.fork(lambda: self._wait_as_next_worker(ours, theirs))
            theirs.send(str(pid).encode())               # arrives on ours, in the zygote
            code = 0
        except OSError as exc:
            code = exc.errno or 1
        finally:
            os._exit(code)

    def _wait_as_next_worker(self, ours, theirs):
        """The next worker: sleep until the zygote hands us a slot, then become that worker. Never returns."""
        code = WorkerExit.CRASH
        try:
            ours.close()                  # the zygote's ends: when it goes, our recv() sees the end
            self.sock.close()
            os.close(self.notice_r)
            os.close(self.notice_w)
            setproctitle.setproctitle(f"prefork: next worker [{self.setup.name}]")
            _rehearse(self.setup)
            try:
                request = theirs.recv(MESSAGE_SIZE)       # the worker's signals stay blocked meanwhile
            except ConnectionResetError:  # the zygote went before reading our pid (stopped mid-fork)
                request = b""
            theirs.close()
            if not request:
                code = WorkerExit.OK
                return
            request = json.loads(request)
            worker = Worker(request["slot"], self.setup, request["index"], request["generation"],
                            request["spare"])
            worker.run_in_child(_nothing_to_close)        # never returns
        except BaseException:
            log.exception("zygote: the next worker failed")
        finally:
            os._exit(code)

    def _let_next_worker_go(self):
        """Leaving: close the next worker's socket, and wait a moment for it to exit, so no process outlives us."""
        nascent, self.next_worker = self.next_worker, None
        if nascent is None:
            return
        try:
            pidfd = os.pidfd_open(nascent.pid)
        except (AttributeError, OSError):
            pidfd = None
        nascent.sock.close()
        if pidfd is not None:
            wait_readable(pidfd, 1.0)
            os.close(pidfd)

    def _tell(self, text):
        try:
            self.sock.send(text.encode("utf-8", "replace")[:MESSAGE_SIZE])
        except OSError:                   # the master is gone; PR_SET_PDEATHSIG follows
            pass


def _rehearse(setup):
    """Make the calls a worker's start makes, once, while nothing waits for this next worker.

    A worker's start touches memory shared copy-on-write with the zygote, and
    on our 2-core VM the first write to such a page costs 4 to 30 us; it
    touches about a hundred. Made now, the copies are off the respawn path.
    Harmless: our signals are blocked, and the worker makes each call again.
    """
    signal.set_wakeup_fd(-1)
    for signum in FORK_BLOCKED_SIGNALS | {signal.SIGCONT}:
        signal.signal(signum, forking.do_nothing)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(WorkerSignal.DUMP_STACKS, file=sys.stderr, all_threads=True, chain=False)
    prctl(PR_SET_PDEATHSIG, 0)
    json.loads(json.dumps({"index": 1, "slot": 1, "generation": 0, "spare": False}))
    Worker(1, setup, 1)
    os.getppid()
    time.time()


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _nothing_to_close():
    """The next worker closed the zygote's fds already; the master's were closed by the zygote."""
