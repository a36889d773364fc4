"""Signals and process state: what the master inherits, what workers pass on, what habit sends."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import REPO, exchange, process_gone, title, wait_for

TESTS = os.path.join(REPO, "tests")


def serve(serve_cli, *args, **kwargs):
    kwargs.setdefault("cwd", TESTS)
    return serve_cli(*args, **kwargs)


def test_a_master_launched_with_sigchld_ignored_still_reads_exit_statuses(serve_cli):
    """With SIGCHLD ignored (inherited through exec) the kernel reaps workers itself and a
    SIGKILLed worker used to be logged as 'exit code 0'."""
    launcher = ("python3", "-c", "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
                                 "os.execvp(sys.argv[1], sys.argv[1:])")
    server = serve(serve_cli, "-w", "1", "-b", "127.0.0.1:0", prefix=launcher)
    server._prefixed = False            # the launcher execs: the master has its pid
    address = server.addresses()[0]
    (victim,) = server.wait_workers(1)
    os.kill(victim, signal.SIGKILL)
    server.wait_replaced({victim}, 1)
    assert f"worker 1 (pid {victim}) died unexpectedly (signal SIGKILL)" in server.log()
    assert exchange("tcp", address) == b"hello\n"


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGWINCH])
def test_signals_sent_by_habit_never_take_the_master_down(serve_cli, signum):
    server = serve(serve_cli, "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    workers = server.wait_workers(1)
    os.kill(server.pid, signum)
    name = signal.Signals(signum).name
    server.wait_log(rf"{name}(: reopened no log file| ignored)")
    assert server.proc.poll() is None and {w.pid for w in server.workers()} == workers
    assert exchange("tcp", address) == b"hello\n"


# Signals a process can set: glibc keeps 32 and 33 for itself (a launcher such as pytest-xdist's
# worker on Python 3.13 passes 32 on ignored, and nobody can change that).
SETTABLE = sum(1 << (signum - 1) for signum in signal.valid_signals())


@pytest.mark.parametrize("preload", [(), ("--preload",)], ids=["forked by the master", "forked by a zygote"])
def test_programs_a_worker_starts_inherit_no_ignored_or_blocked_signal(serve_cli, preload):
    server = serve(serve_cli, "apps.handlers:SignalReport", "-w", "1", "--spare-workers", "1",
                   "-b", "127.0.0.1:0", *preload)
    address = server.addresses()[0]
    wait_for(lambda: len(server.workers()) == 2 and server.log().count("ready (pid") == 2)
    ignored, blocked = exchange("tcp", address, b"?\n").split()
    assert int(ignored, 16) & SETTABLE == 0 and int(blocked, 16) & SETTABLE == 0, (ignored, blocked)
    serving = [w.pid for w in server.workers() if "(spare)" not in title(w)]
    os.kill(serving[0], signal.SIGKILL)            # the spare takes over: check it too
    server.wait_log("now serving as worker 1")
    ignored, blocked = exchange("tcp", address, b"?\n").split()
    assert int(ignored, 16) & SETTABLE == 0 and int(blocked, 16) & SETTABLE == 0, (ignored, blocked)


def test_a_timeout_kill_dumps_stacks_but_never_a_core_file(serve_cli, tmp_path):
    """Before: SIGABRT, whose default action dumps core where the limit allows it."""
    (tmp_path / "hang.py").write_text(
        "import time, prefork\n"
        "class Hang(prefork.BaseRequestHandler):\n"
        "    def handle(self):\n"
        "        time.sleep(60)\n")
    launcher = ("sh", "-c", 'ulimit -c unlimited && exec "$@"', "sh")
    server = serve(serve_cli, "hang:Hang", "-w", "1", "-b", "127.0.0.1:0", "--timeout", "1",
                   "--client-timeout", "0.5", cwd=str(tmp_path), prefix=launcher)
    server._prefixed = False
    address = server.addresses()[0]
    (stuck,) = server.wait_workers(1)
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(b"x")
        try:
            assert client.recv(10) == b""
        except ConnectionResetError:         # killed holding our unread byte
            pass
    log = server.wait_log(rf"worker 1 \(pid {stuck}\) exited \(timeout, signal SIGKILL\)")
    assert "most recent call first" in log and "in handle" in log
    assert "core dumped" not in log and not [p for p in os.listdir(tmp_path) if p.startswith("core")]


def test_a_stop_that_begins_during_a_timeout_kill_keeps_that_kill(serve_cli):
    server = serve(serve_cli, "apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0", "--timeout", "1",
                   "--client-timeout", "0", "--graceful-timeout", "30")
    address = server.addresses()[0]
    server.wait_workers(1)
    client = socket.create_connection(address, timeout=10)
    client.sendall(b"60\n")
    server.wait_log("dumping its stacks")
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5, "the worker's kill kept its deadline, not the graceful timeout"
    assert re.search(r"exited \(timeout, signal SIGKILL\)", server.log())
    client.close()


CTRL_C_IN_A_THREAD = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {tests!r})
    import prefork
    from apps.handlers import PidEcho

    server = prefork.TCPServer(("127.0.0.1", 0), PidEcho, policy=prefork.Prefork(workers=2))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    print(server.server_address[1], flush=True)
    try:
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:
        time.sleep(0.5)                  # the program's own clean-up comes first
        server.shutdown()
        server.server_close()
        thread.join()
        print("stopped", flush=True)
""")


def test_ctrl_c_stops_a_pool_run_from_a_thread_once_and_cleanly():
    """The terminal sends SIGINT to the whole process group; workers leave the stop to the master."""
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C_IN_A_THREAD.format(tests=TESTS)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = int(proc.stdout.readline())
        wait_for(lambda: len(psutil.Process(proc.pid).children()) == 2)
        workers = {c.pid for c in psutil.Process(proc.pid).children()}
        assert exchange("tcp", ("127.0.0.1", port), b"x\n").endswith(b"|x\n")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and out == "stopped\n", err
    assert "unexpectedly" not in err and "ready" not in err.split("stop")[-1], err
    assert all(process_gone(pid) for pid in workers)


STOP_DURING_A_COMPUTATION_IN_A_THREAD = textwrap.dedent("""
    import socket, sys, threading, time
    sys.path.insert(0, {tests!r})
    import prefork
    from apps.handlers import Busy

    server = prefork.TCPServer(("127.0.0.1", 0), Busy, policy=prefork.Prefork(workers=1),
                               config=prefork.Config(graceful_timeout=30))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    while not any(w["state"] == "idle" for w in server.stats()["workers"]):
        time.sleep(0.05)
    client = socket.create_connection(server.server_address, timeout=40)
    client.sendall(b"1.5\\n")
    assert client.recv(100) == b"computing\\n"
    started = time.monotonic()
    server.shutdown()                  # SIGTERM reaches the worker while it runs bytecode
    print(f"{{time.monotonic() - started:.2f}}", client.recv(100) == b"", flush=True)
    server.server_close()
    thread.join()
""")


def test_a_pool_embedded_in_a_thread_stops_when_the_worker_was_signalled_mid_computation():
    """CPython 3.13.0, in a child forked from a non-main thread, ran a handler only at an interrupted
    system call: a SIGTERM taken between two bytecodes waited for the graceful timeout's SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", STOP_DURING_A_COMPUTATION_IN_A_THREAD.format(tests=TESTS)],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    elapsed, closed = proc.stdout.split()
    assert closed == "True", "the request in hand finishes"
    assert 0.3 <= float(elapsed) < 10, f"stopped after {elapsed} s: the graceful stop waited on the SIGKILL"


def test_stopping_under_timeout_or_systemd_gives_no_warning_about_sigcont(serve_cli):
    """systemd and timeout(1) send SIGCONT right after SIGTERM, in case the service was stopped."""
    server = serve(serve_cli, "-w", "1", "-b", "127.0.0.1:0")
    server.wait_workers(1)
    os.kill(server.pid, signal.SIGTERM)
    os.kill(server.pid, signal.SIGCONT)
    assert server.proc.wait(10) == 0
    assert "WARNING" not in server.log()


def test_as_pid_1_an_idle_master_does_not_poll(serve_cli):
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare to run the master as PID 1 of a new PID namespace")
    server = serve_cli("-w", "1", "-b", "127.0.0.1:0", "--monitor-interval", "10",
                       prefix=("unshare", "--pid", "--fork", "--kill-child"))
    server.wait_log("worker 1 ready")
    master = psutil.Process(server.master_pid)
    before = master.num_ctx_switches().voluntary
    time.sleep(2)                          # the condition measured *is* two idle seconds
    woke = master.num_ctx_switches().voluntary - before
    assert woke <= 6, f"an idle master woke {woke} times in 2 s (polling every 0.1 s would be 20)"


def test_sigquit_stops_a_serial_server_at_once(serve_cli):
    server = serve(serve_cli, "apps.handlers:Sleepy", "--policy", "serial", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_log("server .* starting")
    with socket.create_connection(address, timeout=15) as client:
        client.sendall(b"30\n")
        wait_for(lambda: any(c.status == "ESTABLISHED" and c.laddr.port == address[1]
                             for c in psutil.Process(server.pid).net_connections()))
        started = time.monotonic()
        os.kill(server.pid, signal.SIGQUIT)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - started < 3, "the request in hand was abandoned"
