"""`prefork serve` as a user runs it: binds, titles, signals, replacement, bad input."""

import os
import signal
import socket
import threading
import time

import psutil
import pytest

from prefork.policies import cpu_count
from conftest import REPO, exchange, process_gone, run_cli, stream_exchange, wait_for

TESTS = os.path.join(REPO, "tests")


def start_in_tests(serve_cli, *args):
    return serve_cli(*args, cwd=TESTS)


def send_later(address, payload, results, timeout=30):
    """Start a request in a thread (for requests in flight during a signal)."""
    def run():
        try:
            results.append(stream_exchange(socket.AF_INET, address, payload, timeout))
        except OSError as exc:
            results.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_default_serve_is_echo_with_a_worker_per_cpu(serve_cli):
    """The default port, 8000, is checked in test_first_use.py without binding it (it may be taken)."""
    server = serve_cli(env={"PREFORK_BIND": "127.0.0.1:0"})
    server.wait_workers(cpu_count())
    assert exchange("tcp", server.addresses()[0], b"one\ntwo\n") == b"one\ntwo\n"
    assert server.stop() == 0


def test_several_binds_of_every_kind_at_once(serve_cli, short_tmp):
    directory = short_tmp
    stream, dgram = os.path.join(directory, "s.sock"), os.path.join(directory, "d.sock")
    server = serve_cli("-w", "2", "-b", "127.0.0.1:0", "-b", "[::1]:0", "-b", f"unix:{stream}",
                       "-b", "udp://127.0.0.1:0", "-b", f"unix-dgram:{dgram}", "-b", "udp://[::1]:0")
    tcp4, tcp6, unix, udp4, unix_dgram, udp6 = server.addresses()
    server.wait_workers(2)
    assert exchange("tcp", tcp4, b"a\n") == b"a\n"
    assert exchange("tcp", tcp6, b"b\n") == b"b\n"
    assert exchange("unix", unix, b"c\n") == b"c\n"
    assert exchange("udp", udp4, b"d") == b"d"
    assert exchange("unix-dgram", unix_dgram, b"e") == b"e"
    assert exchange("udp", udp6, b"f") == b"f"
    assert server.stop() == 0
    assert not os.path.exists(stream) and not os.path.exists(dgram)


def test_process_titles_name_master_and_workers(serve_cli):
    server = serve_cli("-w", "2", "-b", "127.0.0.1:0", "-n", "myapp")
    server.addresses()
    pids = server.wait_workers(2)
    assert " ".join(psutil.Process(server.pid).cmdline()).startswith("prefork: master [myapp]")
    titles = sorted(" ".join(psutil.Process(pid).cmdline()).strip() for pid in pids)
    assert titles == ["prefork: worker 1 [myapp]", "prefork: worker 2 [myapp]"]


def request_in_hand(*pids):
    """True once one of the workers holds an accepted connection."""
    return any(c.status == "ESTABLISHED" for pid in pids for c in psutil.Process(pid).net_connections())


def test_killed_worker_is_replaced_and_its_queue_is_not_lost(serve_cli):
    server = start_in_tests(serve_cli, "apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    (victim,) = server.wait_workers(1)
    in_flight = socket.create_connection(address, timeout=10)
    in_flight.sendall(b"30\n")
    wait_for(lambda: request_in_hand(victim), message="the only worker busy")
    queued = [socket.create_connection(address, timeout=10) for _ in range(3)]   # in the listen queue
    for sock in queued:
        sock.sendall(b"0\n")
    os.kill(victim, signal.SIGKILL)
    (replacement,) = server.wait_replaced({victim}, 1)
    for sock in queued:
        with sock:
            assert sock.recv(100) == f"done {replacement}\n".encode(), "queued connections survive"
    with in_flight:
        try:
            assert in_flight.recv(100) == b""
        except ConnectionResetError:
            pass                           # the request in the dead worker's hands is lost
    assert "died unexpectedly (signal SIGKILL)" in server.log()


def test_sigterm_finishes_the_request_in_flight_then_exits_0(serve_cli):
    server = start_in_tests(serve_cli, "apps.handlers:Sleepy", "-w", "2", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    workers = server.wait_workers(2)
    results = []
    client = send_later(address, b"3\n", results)          # long enough to be seen in hand on a busy machine
    wait_for(lambda: request_in_hand(*workers), message="request in hand")
    assert server.stop(signal.SIGTERM) == 0
    client.join(10)
    assert results[0].startswith(b"done ")
    assert all(process_gone(pid) for pid in workers)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)


def test_graceful_timeout_kills_a_request_that_takes_too_long(serve_cli):
    server = start_in_tests(serve_cli, "apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0",
                            "--graceful-timeout", "0.5")
    address = server.addresses()[0]
    (worker,) = server.wait_workers(1)
    results = []
    client = send_later(address, b"60\n", results)
    wait_for(lambda: request_in_hand(worker))
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    client.join(5)
    assert "still alive after its graceful timeout: SIGKILL" in server.log()
    assert process_gone(worker)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT])
def test_sigint_and_sigquit_stop_at_once(serve_cli, signum):
    server = start_in_tests(serve_cli, "apps.handlers:Sleepy", "-w", "2", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    workers = server.wait_workers(2)
    results = []
    client = send_later(address, b"60\n", results)
    wait_for(lambda: request_in_hand(*workers))
    started = time.monotonic()
    assert server.stop(signum) == 0
    assert time.monotonic() - started < 5, "a quick stop does not wait for the 60 s request"
    client.join(5)
    assert results == [b""] or isinstance(results[0], OSError), "the request in hand was abandoned"
    assert all(process_gone(pid) for pid in workers)


def test_handler_that_raises_is_logged_and_the_worker_keeps_serving(serve_cli):
    server = start_in_tests(serve_cli, "apps.handlers:Raising", "-w", "1", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    (worker,) = server.wait_workers(1)
    for _ in range(5):
        stream_exchange(socket.AF_INET, address, b"x\n")
    server.wait_log("handler exploded on purpose", count=5)
    log = server.log()
    assert "Traceback" in log and "exception while handling a request" in log
    assert server.wait_workers(1) == {worker}


def test_oversized_datagram_does_not_crash_a_worker(serve_cli, short_tmp):
    directory = short_tmp
    server = serve_cli("-w", "1", "-b", "udp://127.0.0.1:0", "-b", f"unix-dgram:{directory}/d.sock")
    udp, unix_dgram = server.addresses()
    (worker,) = server.wait_workers(1)
    big = b"x" * 60000                     # far over socketserver's max_packet_size of 8192
    assert exchange("udp", udp, big) == big[:8192]
    assert exchange("unix-dgram", unix_dgram, big) == big[:8192]
    assert exchange("udp", udp, b"small") == b"small"
    assert server.wait_workers(1) == {worker}


def test_workers_never_outlive_a_killed_master(serve_cli):
    server = serve_cli("-w", "3", "-b", "127.0.0.1:0")
    server.addresses()
    workers = server.wait_workers(3)
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_for(lambda: all(process_gone(pid) for pid in workers), timeout=2,
             message="workers gone within 2 s of the master's death")


def test_sighup_replaces_every_worker_and_keeps_serving(serve_cli):
    server = serve_cli("-w", "2", "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    old = server.wait_workers(2)
    os.kill(server.pid, signal.SIGHUP)
    wait_for(lambda: not (old & {w.pid for w in server.workers()}) and len(server.workers()) == 2,
             message="both workers replaced")
    assert exchange("tcp", address, b"still here\n") == b"still here\n"
    # A worker leaves the list of live children a moment before the master logs its exit.
    wait_for(lambda: server.log().count("(reload, exit code 0)") == 2)


def test_sigttin_and_sigttou_resize_the_pool(serve_cli):
    server = serve_cli("-w", "2", "-b", "127.0.0.1:0")
    server.addresses()
    server.wait_workers(2)
    os.kill(server.pid, signal.SIGTTIN)
    server.wait_workers(3)
    for wanted in (2, 1):          # one at a time: two quick signals of a kind may arrive as one
        os.kill(server.pid, signal.SIGTTOU)
        server.wait_log(rf"SIGTTOU: {wanted} worker\(s\) wanted")
    wait_for(lambda: len(server.workers()) == 1)
    # A worker leaves the list of live children a moment before the master logs its exit.
    wait_for(lambda: server.log().count("(stop, exit code 0)") == 2)
    assert len(server.workers()) == 1


# -- bad input: one line, a non-zero exit, no traceback ------------------------------

def one_line_error(code, stdout, stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code != 0
    assert "Traceback" not in stderr
    assert lines and lines[-1].startswith("prefork: error: "), stderr
    return lines[-1]


@pytest.mark.parametrize("args, expected, code", [
    (["-b", "127.0.0.1:70000"], "port 70000 is out of range", 2),
    (["-b", "127.0.0.1"], "expected HOST:PORT", 2),
    (["-b", "ftp://host:21"], "unknown scheme", 2),
    (["-b", "no-such-host.invalid:8000"], "unknown host 'no-such-host.invalid'", 1),
    (["-w", "0"], "--workers: must be between 1 and 4096, got 0", 2),
    (["-w", "-2"], "--workers: must be between 1 and 4096, got -2", 2),
    (["-w", "100000000000"], "--workers: must be between 1 and 4096", 2),
    (["--threads", "0"], "--threads: must be between 1 and 1024, got 0", 2),
    (["--backlog", "99999999999"], "--backlog: must be between 1 and 65535", 2),
    (["--monitor-interval", "inf", "--timeout", "0"], "--monitor-interval: must be a finite number, got inf", 2),
    (["--spare-workers", "-1"], "--spare-workers: must be between 0 and 1024, got -1", 2),
    (["-b", "127.0.0.1:\u00b2"], "is not a number", 2),
    (["-b", "a..b:1234"], "'a..b' is not a valid host name", 1),
    (["-w", "many"], "--workers: must be a whole number, got 'many'", 2),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag (see 'prefork serve --help')", 2),
    (["--graceful-timeout", "-1"], "--graceful-timeout: must be at least 0, got -1.0", 2),
    (["no_such_module:Handler"], "cannot import handler 'no_such_module:Handler': no module named", 2),
    (["apps.handlers"], "expected MODULE:CLASS", 2),
    (["apps.handlers:Raising", "--preload", "--hooks", "no_such_hooks"], "cannot import hooks module", 2),
    (["apps.handlers:NOT_A_HANDLER", "--preload"], "is not a request handler class", 3),   # the zygote retries
    (["apps.handlers:Missing", "--preload"], "module 'apps.handlers' has no 'Missing'", 3),
    (["--policy", "thread", "-w", "2"], "--workers applies to --policy prefork only, not --policy thread", 2),
    (["--timeout", "-1"], "--timeout: must be at least 0, got -1.0", 2),
    (["myapp.py:Handler"], "bad handler 'myapp.py:Handler': name the module, not its file: myapp:Handler", 2),
    (["-b", "udp:127.0.0.1:9000"], "bad bind 'udp:127.0.0.1:9000': write udp://127.0.0.1:9000", 2),
    (["-b", "127.0.0.1:-1"], "port -1 is out of range 0-65535", 2),
    (["--policy", "forking"], "--policy: must be one of serial, fork, thread, prefork, adaptive, got 'forking'", 2),
    (["--config", "/nonexistent/prefork.toml"], "cannot read config file /nonexistent/prefork.toml", 2),
    (["--policy", "thread", "--user", "nobody"], "--user needs a pool (--policy prefork or adaptive)", 2),
    (["--policy", "serial", "--control", "/tmp/never.sock"], "--control needs a pool", 2),
    (["--socket-owner", "no-such-user-here"], "--socket-owner: no such user 'no-such-user-here'", 2),
    (["-c", "../pyproject.toml"], "../pyproject.toml has no [tool.prefork] table", 2),
    (["--control", "/tmp/" + "x" * 120], "cannot open the control socket", 1),
    (["-b", "127.0.0.1:8765", "-b", "127.0.0.1:8765"], "--bind 127.0.0.1:8765 is given twice", 2),
    (["-b", "127.0.0.1:8765", "-b", "tcp://127.0.0.1:8765"],
     "--bind 127.0.0.1:8765 and tcp://127.0.0.1:8765 are the same address, given twice", 2),
])
def test_bad_input_gets_one_clear_line(args, expected, code):
    if "-b" not in args:          # a case that gets as far as binding must not need port 8000 free
        args = [*args, "-b", "127.0.0.1:0"]
    returncode, stdout, stderr = run_cli("serve", *args, cwd=TESTS)
    line = one_line_error(returncode, stdout, stderr)
    assert expected in line and returncode == code


def test_port_already_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, stdout, stderr = run_cli("serve", "-b", f"127.0.0.1:{port}")
    line = one_line_error(returncode, stdout, stderr)
    assert line == f"prefork: error: cannot bind 127.0.0.1:{port}: address already in use" and returncode == 1
    assert stderr.strip() == line


@pytest.mark.parametrize("spec, expected", [
    ("apps.handlers:NOT_A_HANDLER", "is not a request handler class"),
    ("apps.handlers:Missing", "module 'apps.handlers' has no 'Missing'"),
])
def test_handler_problem_found_by_workers_stops_the_master(spec, expected):
    returncode, stdout, stderr = run_cli("serve", spec, "-w", "2", "-b", "127.0.0.1:0", cwd=TESTS)
    line = one_line_error(returncode, stdout, stderr)
    assert expected in line and "no worker could boot" in line and returncode == 3


def test_unknown_top_level_flag_and_command():
    for args, expected in ((["--bogus"], "unrecognized arguments: --bogus"),
                           (["bogus"], "invalid choice: 'bogus'")):
        returncode, stdout, stderr = run_cli(*args)
        assert expected in one_line_error(returncode, stdout, stderr) and returncode == 2


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_is_a_stop_not_a_crash(serve_cli, signum):
    """Ctrl-C in a terminal, or systemd's KillMode=control-group, signal master and workers at once."""
    server = serve_cli("-w", "4", "-b", "127.0.0.1:0")
    server.addresses()
    workers = server.wait_workers(4)
    os.killpg(server.pid, signum)
    assert server.proc.wait(10) == 0
    log = server.log()
    assert "unexpectedly" not in log and "[ERROR]" not in log, log
    assert all(process_gone(pid) for pid in workers)


# -- a defaulted pool size follows the CPUs this process may use (prefork/cpus.py), and says which limit -------

def start_up_line(server):
    """The master's `master N starting: ...` line, once its workers are ready."""
    server.wait_log(r"ready \(pid")
    return next(line for line in server.log().splitlines() if " starting: " in line)


@pytest.mark.parametrize("args, sized", [
    ((), "1 worker(s) (one per CPU: {why}) x 1 thread(s)"),
    (("--policy", "adaptive"), "1 worker(s) (at most 4, 4 per CPU: {why}) x 1 thread(s)"),
    (("-w", "1"), "1 worker(s) x 1 thread(s)"),          # a size given: nothing to explain
])
def test_the_start_up_line_names_the_cpu_limit_that_set_the_pool_size(serve_cli, args, sized):
    """taskset -c 0 leaves one CPU; a tighter cgroup quota on the machine running the tests is named instead."""
    import shutil
    import subprocess
    import sys
    if shutil.which("taskset") is None:
        pytest.skip("needs taskset (util-linux)")
    pinned = ("taskset", "-c", "0")
    script = "from prefork.cpus import usable_cpus; print(usable_cpus()[1])"
    why = subprocess.run([*pinned, sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=20, check=True).stdout.strip()
    from prefork.cpus import cgroup_quota
    if (os.cpu_count() or 1) > 1 and cgroup_quota() is None:
        assert why == f"CPU affinity, 1 of {os.cpu_count()} CPUs"
    server = serve_cli("hello", "-b", "127.0.0.1:0", *args, prefix=pinned)
    assert sized.format(why=why) in start_up_line(server), server.log()
    assert server.stop() == 0


def test_the_default_pool_follows_a_cgroup_cpu_quota(serve_cli):
    """CPUQuota=100% is one CPU's time whatever the machine: one worker, and the line says the quota decided."""
    import shutil
    import subprocess
    scope = ("systemd-run", "--scope", "--quiet", "-p", "CPUQuota=100%")
    if shutil.which("systemd-run") is None:
        pytest.skip("needs systemd-run")
    probe = subprocess.run([*scope, "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("systemd-run --scope does not work here (it needs systemd as PID 1, and root): "
                    + "; ".join(probe.stderr.split("\n")).strip("; "))
    server = serve_cli("hello", "-b", "127.0.0.1:0", prefix=scope)
    line = start_up_line(server)
    assert "1 worker(s) (one per CPU: the cgroup CPU quota of 1 CPU, " in line, server.log()
    assert server.stop() == 0


def test_the_default_pool_follows_a_fabricated_cgroup_quota(serve_cli, tmp_path):
    """Without systemd: a cgroup tree of our own mounted over /sys/fs/cgroup, in a mount namespace of the
    server's own, holds half a CPU's quota (v2 and v1 files both, whichever this kernel's lines name)."""
    import shutil
    import subprocess
    if not shutil.which("unshare") or os.geteuid() != 0:
        pytest.skip("needs root and util-linux unshare to mount a cgroup tree in a mount namespace of its own")
    tree = tmp_path / "cgroup"
    for directory in ("cpu", "cpu,cpuacct"):
        (tree / directory).mkdir(parents=True)
        (tree / directory / "cpu.cfs_quota_us").write_text("50000\n")
        (tree / directory / "cpu.cfs_period_us").write_text("100000\n")
    (tree / "cpu.max").write_text("50000 100000\n")
    mounted = ("unshare", "--mount", "sh", "-c", 'mount --bind "$0" /sys/fs/cgroup && exec "$@"', str(tree))
    probe = subprocess.run([*mounted, "true"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a new mount namespace here: {probe.stderr.strip()}")
    server = serve_cli("hello", "-b", "127.0.0.1:0", prefix=mounted)
    line = start_up_line(server)
    assert "1 worker(s) (one per CPU: the cgroup CPU quota of 0.5 CPUs, " in line, server.log()
    assert " in /sys/fs/cgroup" in line
    assert server.stop() == 0
