"""What scripts/zero_downtime.py and scripts/nginx_lb.py share: `prefork serve` instances run
through their control socket and pid file, the operations an operator performs on them (reload,
SIGHUP, upgrade in place), each timed until the pool has settled, and load that runs meanwhile.

Why it looks like this:

- The operations are done the way an operator does them: `prefork ctl reload` as a command,
  signals to the pid in the pid file. Only the polling for "settled" speaks the control protocol
  in-process (prefork.serve.control_client.send), because a Python start-up per poll would be the slowest part.
- An upgrade makes the new master a child of the old one; once the old one exits, the new one
  would go to init, beyond our reach. So the scripts become a child subreaper: orphaned masters
  come to us, we reap them, and at the end we can say that nothing is left.
- Every instance runs in a session of its own, so that one killpg() at the end reaches every
  master an upgrade started and all their workers, whatever went wrong before.
- The load generator counts only what happens inside its measured window, and the window has a
  fixed length; so the operations run in a thread, on a schedule that fits in the window, and a
  schedule that overruns the window is a failure, never a silent truncation.
"""

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from prefork.tune import loadgen  # noqa: E402
from prefork.serve.control_client import send  # noqa: E402
from prefork.serve.pidfile import read_pid  # noqa: E402
from prefork.tune.server_under_test import connect_address, machine  # noqa: E402

PY = sys.executable
SETTLE_TIMEOUT = 30.0        # seconds an operation may take before it counts as failed
START_TIMEOUT = 30.0         # seconds for a new instance to have every worker ready
STOP_TIMEOUT = 20.0          # seconds for a master to exit after SIGTERM
_PR_SET_CHILD_SUBREAPER = 36

# How the load generator names what went wrong (prefork/tune/client_process.py), by the columns we report.
REFUSED_KINDS = {"refused", "no such socket"}
RESET_KINDS = {"reset", "broken pipe"}


class OperationFailed(Exception):
    """An operation did not complete (the pool did not settle, a command failed): the run fails."""


class Parser(argparse.ArgumentParser):
    """argparse with one line on bad input, exit status 2, as `prefork serve` does."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive(kind):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return check


def at_least_zero(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def become_subreaper():
    """Masters that an upgrade started, orphaned when their parent exits, become our children."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def terminate_on_sigterm():
    """SIGTERM unwinds like Ctrl-C, so that every finally block stops what it started."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def wait_for(predicate, timeout, what, interval=0.01):
    """Poll predicate until it returns something truthy; OperationFailed after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise OperationFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alive(pid):
    """Whether pid is a process that has not exited (a zombie has)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reap(pid, timeout):
    """Wait for pid to exit and reap it if it is our child; its exit status, or None if not ours."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:            # not our child (not yet orphaned to us): watch it instead
            if not alive(pid):
                return None
        else:
            if done:
                return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            raise OperationFailed(f"process {pid} did not exit within {timeout:.0f} s")
        time.sleep(0.01)


def in_session(sid):
    """Pids of the live processes in session sid."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
    return found


class Instance:
    """`prefork serve HANDLER -b BIND -w N --control DIR/NAME.ctl --pid DIR/NAME.pid --log-file DIR/NAME.log`,
    in a session of its own, followed through its upgrades by its pid file and control socket."""

    LISTENING = re.compile(r"listening on (.*)$", re.M)

    def __init__(self, name, workdir, bind, workers, handler="hello", extra=()):
        self.name, self.workers = name, workers
        self.control = os.path.join(workdir, f"{name}.ctl")
        self.pidfile = os.path.join(workdir, f"{name}.pid")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.argv = [PY, "-m", "prefork", "serve", handler, "-b", bind, "-w", str(workers),
                     "--control", self.control, "--pid", self.pidfile, "--log-file", self.log_path, *extra]
        self.proc = self.sid = self.address = None

    def command(self):
        return " ".join(["prefork", *self.argv[3:]])

    def start(self):
        """Start the master; return once it listens and every worker is ready."""
        with open(self.stderr_path, "wb") as stderr, loadgen.deferred_signals():
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            self.sid = self.proc.pid
        try:
            wait_for(lambda: self._died() or self.settled(), START_TIMEOUT, f"{self.name} to be ready")
        except OperationFailed as exc:
            raise OperationFailed(f"{self.name}: {exc}; {self.tail()}") from None
        listening = self.LISTENING.search(self.log())
        self.address = connect_address(listening.group(1).split(", ")[0])
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise OperationFailed(f"{self.name} exited with status {self.proc.returncode}: {self.tail()}")
        return None

    def log(self):
        text = ""
        for path in (self.log_path, self.stderr_path):
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                text += f.read()
        return text

    def tail(self, lines=8):
        return "its log ends:\n    " + "\n    ".join(self.log().strip().splitlines()[-lines:])

    def master(self):
        """The master the pid file names (the new one, once an upgrade has begun); 0 if none."""
        return read_pid(self.pidfile)

    def signal_master(self, signum):
        """Send signum to the master the pid file names; its pid (never kill(0): that is our group)."""
        pid = self.master()
        if not pid:
            raise OperationFailed(f"{self.name}: {self.pidfile} names no master")
        os.kill(pid, signum)
        return pid

    def status(self):
        """`prefork ctl status --json`, or None if the control socket does not answer."""
        try:
            reply = send(self.control, {"command": "status"}, timeout=5)
        except (OSError, ValueError):
            return None
        return reply.get("result") if reply.get("ok") else None

    def settled(self, master=None, generation=None, status=None):
        """The status once the pool has settled, else None: the control socket answered by master
        (if given), at generation or later, as many workers as its target, every one ready (idle
        or busy) and of the master's generation, none stopping, no upgrade under way."""
        status = self.status() if status is None else status
        if status is None:
            return None
        head, workers = status["master"], status["workers"]
        if (master is not None and head["pid"] != master) or head["state"] != "running" or head.get("upgrade"):
            return None
        if generation is not None and head["generation"] < generation:
            return None
        if len(workers) != head["target_workers"]:
            return None
        if any(w["state"] not in ("idle", "busy") or w["generation"] != head["generation"] for w in workers):
            return None
        return status

    def healthy(self):
        """The active health check of docs/deploy.md: the master answers and has a ready worker."""
        status = self.status()
        return bool(status and status["master"]["state"] == "running"
                    and any(w["state"] in ("idle", "busy") for w in status["workers"]))

    # -- operations: each returns (seconds until settled, what happened) --------------------

    def reload(self, how):
        """`prefork ctl reload` (how="ctl") or SIGHUP to the master (how="hup"): every worker replaced.
        Besides the time until settled, it notes when the master began (its generation went up),
        which for `prefork ctl` comes after a Python start-up, and how long that command took."""
        before = wait_for(self.settled, SETTLE_TIMEOUT, f"{self.name} to be settled before a reload")
        generation, old = before["master"]["generation"], {w["pid"] for w in before["workers"]}
        started = time.monotonic()
        command = began = command_done = None
        if how == "ctl":
            command = subprocess.Popen([PY, "-m", "prefork", "ctl", "--control", self.control, "reload"], cwd=REPO,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        else:
            self.signal_master(signal.SIGHUP)

        def progress():
            nonlocal began, command_done
            if command is not None and command_done is None and command.poll() is not None:
                command_done = time.monotonic()
                if command.returncode:
                    raise OperationFailed(f"prefork ctl reload on {self.name} exited with {command.returncode}")
            status = self.status()
            if began is None and status and status["master"]["generation"] > generation:
                began = time.monotonic()
            return self.settled(generation=generation + 1, status=status)

        try:
            after = wait_for(progress, SETTLE_TIMEOUT, f"{self.name}'s reload to settle")
            seconds = time.monotonic() - started
            if command is not None and command_done is None:
                command.wait(SETTLE_TIMEOUT)
                command_done = time.monotonic()
        finally:
            if command is not None:
                if command.poll() is None:
                    command.kill()
                _, error = command.communicate()
        if command is not None and command.returncode:
            raise OperationFailed(f"prefork ctl reload on {self.name}: {error.strip()}")
        new = {w["pid"] for w in after["workers"]}
        if new & old:
            raise OperationFailed(f"{self.name}: workers {sorted(new & old)} were not replaced")
        detail = f"{len(new)} workers replaced, generation {after['master']['generation']}"
        if command is not None:
            detail += (f"; the master began {began - started:.2f} s after `prefork ctl reload` started, "
                       f"which took {command_done - started:.2f} s")
        return seconds, detail

    def upgrade(self):
        """SIGUSR2 to the master; once the new master serves (the pid file names it and it answers
        the control socket with every worker ready), SIGTERM to the old one, until it has exited."""
        oldbin = self.pidfile + ".oldbin"
        started = time.monotonic()
        old = self.signal_master(signal.SIGUSR2)
        new = wait_for(lambda: (lambda pid: pid if pid not in (0, old) else None)(read_pid(self.pidfile)),
                       SETTLE_TIMEOUT, f"{self.name}'s new master to write the pid file")
        if read_pid(oldbin) != old:
            raise OperationFailed(f"{self.name}: {oldbin} does not name the old master {old}")
        wait_for(lambda: self.settled(master=new), SETTLE_TIMEOUT, f"{self.name}'s new master {new} to serve")
        serving = time.monotonic() - started
        os.kill(old, signal.SIGTERM)
        code = self.proc.wait(STOP_TIMEOUT) if old == self.proc.pid else reap(old, STOP_TIMEOUT)
        seconds = time.monotonic() - started
        if code not in (0, None):
            raise OperationFailed(f"{self.name}: the old master {old} exited with status {code}")
        if os.path.exists(oldbin) or read_pid(self.pidfile) != new:
            raise OperationFailed(f"{self.name}: after the upgrade the pid files are wrong")
        wait_for(lambda: self.settled(master=new), SETTLE_TIMEOUT, f"{self.name}'s new master {new} to serve")
        return seconds, f"master {old} -> {new}; the new one served after {serving:.2f} s"

    def stop(self):
        """SIGTERM the current master and wait; then SIGKILL whatever is left of the session.
        Returns the pids that were still there to kill (none, when all went well)."""
        if self.proc is None:
            return []
        master = self.master() or (self.proc.pid if self.proc.poll() is None else 0)
        with contextlib.suppress(ProcessLookupError, OperationFailed):
            if master and alive(master):
                os.kill(master, signal.SIGTERM)
                if master == self.proc.pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(STOP_TIMEOUT)
                else:
                    reap(master, STOP_TIMEOUT)
        left = in_session(self.sid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.sid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(OperationFailed):
                reap(pid, 5)
        self.proc.wait()
        return left


def run_operations(operations, lead, gap, deadline, t0, log):
    """Run each (name, instance, callable) in turn: the first `lead` seconds after t0, each next one
    `gap` seconds after the last settled. Every record has the operation's start (seconds after t0),
    how long it took to settle, and what happened or why it failed. Stops at the first failure,
    and before starting an operation that could not settle before deadline."""
    records = []
    at = t0 + lead
    for name, instance, operation in operations:
        loadgen.sleep_until(at)
        record = {"operation": name, "instance": instance.name, "at": round(time.monotonic() - t0, 3)}
        records.append(record)
        if time.monotonic() > deadline:
            record["error"] = "not started: the load window had ended"
            break
        try:
            seconds, detail = operation()
        except (OperationFailed, OSError, subprocess.SubprocessError) as exc:
            record["error"] = str(exc)
            log(f"  {name} on {instance.name}: FAILED: {exc}")
            break
        record.update(seconds=round(seconds, 3), detail=detail)
        log(f"  +{record['at']:5.1f} s  {name} on {instance.name}: settled in {seconds:.2f} s ({detail})")
        at = time.monotonic() + gap
    return records


def load_with_operations(address, clients, duration, operations, lead, gap, warmup=0.5, timeout=2.0,
                         log=print, watch=None):
    """Drive address with `clients` closed-loop connections, a new connection per request, for
    warmup + duration seconds; run the operations (see run_operations) inside the measured window.
    watch, if given, is called as watch(t0, stopped) in a thread of its own for the window, stopped
    being an Event set when the window closes. Returns (LoadResult, operation records); an operation
    still running when the window closes is recorded as failed."""
    records, done, stopped = [], threading.Event(), threading.Event()

    @contextlib.contextmanager
    def window():
        t0 = time.monotonic()

        def body():
            try:
                records.extend(run_operations(operations, lead, gap, t0 + duration, t0, log))
            finally:
                done.set()

        # Threads only now: the load generator forked its clients before the window opened.
        threads = [threading.Thread(target=body, name="operations", daemon=True)]
        if watch is not None:
            threads.append(threading.Thread(target=watch, args=(t0, stopped), name="watch", daemon=True))
        for thread in threads:
            thread.start()
        yield
        stopped.set()
        if watch is not None:
            threads[1].join(5)
        if not done.wait(0):
            records.append({"operation": "(schedule)", "instance": "-", "at": round(time.monotonic() - t0, 3),
                            "error": "operations still running when the load window closed: "
                                     "give a longer --duration or a shorter --gap"})
            done.wait(SETTLE_TIMEOUT)

    result = loadgen.run_load(address, loadgen.http_get(address, keepalive=False), clients, duration,
                              warmup=warmup, timeout=timeout, half_close=False, during=window)
    return result, records


def summarize(result):
    """The load's figures, errors sorted into the columns we report."""
    kinds = dict(result.error_kinds)
    refused = sum(n for kind, n in kinds.items() if kind in REFUSED_KINDS)
    reset = sum(n for kind, n in kinds.items() if kind in RESET_KINDS)
    return {"requests": result.completed + result.errors, "answered": result.completed, "failed": result.errors,
            "refused": refused, "reset": reset, "other_failures": result.errors - refused - reset,
            "error_kinds": kinds, "seconds": result.seconds, "throughput": round(result.throughput, 1),
            "p50_ms": result.p50_ms and round(result.p50_ms, 2), "p99_ms": result.p99_ms and round(result.p99_ms, 2),
            "max_ms": round(result.latencies[-1] * 1000, 2) if len(result.latencies) else None}


def load_table(load):
    """The load's figures as a small table."""
    header = ("requests", "answered", "failed", "refused", "reset", "other", "req/s", "p50 ms", "p99 ms", "max ms")
    row = (f"{load['requests']:,}", f"{load['answered']:,}", str(load["failed"]), str(load["refused"]),
           str(load["reset"]), str(load["other_failures"]), f"{load['throughput']:,.0f}",
           _ms(load["p50_ms"]), _ms(load["p99_ms"]), _ms(load["max_ms"]))
    widths = [max(len(a), len(b)) for a, b in zip(header, row)]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(line, widths)) for line in (header, row)]
    if load["error_kinds"]:
        lines.append("failures: " + ", ".join(f"{kind} {n}" for kind, n in sorted(load["error_kinds"].items())))
    return "\n".join(lines)


def operations_table(records):
    """One line per operation: when it began, how long until the pool settled, what happened."""
    rows = [("operation", "instance", "at", "settled after", "result")]
    for r in records:
        took = f"{r['seconds']:.2f} s" if "seconds" in r else "-"
        rows.append((r["operation"], r["instance"], f"+{r['at']:.1f} s", took, r.get("detail") or
                     f"FAILED: {r.get('error')}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)



def common_problems(report, expected_operations):
    """What went wrong in any run of operations under load: processes left, operations that failed or
    never completed, failed requests."""
    problems = []
    if report["left_behind"]:
        problems.append(f"processes still running after the stop, killed: {report['left_behind']}")
    problems += [f"{r['operation']} on {r['instance']}: {r['error']}" for r in report["operations"] if "error" in r]
    done = sum("seconds" in r for r in report["operations"])
    if report["load"] is not None and done < expected_operations:
        problems.append(f"only {done} of {expected_operations} operations completed")
    if report["load"] and report["load"]["failed"]:
        problems.append(f"{report['load']['failed']} request(s) failed")
    return problems


def print_tables(report):
    print()
    if report["operations"]:
        print(operations_table(report["operations"]))
        print()
    if report["load"]:
        print(load_table(report["load"]))


def conclude(report, problems, json_path, keep, workdir, kept="logs"):
    """Print the verdict, write the JSON, keep the work directory when asked or when something failed.
    Returns the exit status."""
    report["ok"] = not problems
    report["problems"] = problems
    print("result: " + ("zero failed requests, every operation settled" if not problems else
                        "FAILED: " + "; ".join(problems)))
    if json_path:
        write_json(json_path, report)
    if keep or problems:
        print(f"{kept}: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not problems else 1

def _ms(value):
    return "-" if value is None else f"{value:.2f}"


def write_json(path, report):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


__all__ = ["Instance", "OperationFailed", "Parser", "alive", "at_least_zero", "become_subreaper", "common_problems",
           "conclude", "in_session", "load_table", "load_with_operations", "machine", "operations_table", "positive",
           "print_tables", "reap", "summarize", "terminate_on_sigterm", "wait_for", "write_json"]
