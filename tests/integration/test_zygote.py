"""--preload: a zygote imports the handler, forks the workers, and a reload is a new zygote.

Every test serves a handler module written into its own directory, which
records in a file the pid of every process that imports it.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

import prefork
from apps.handlers import ImportReport
from conftest import REPO, exchange, process_gone, run_cli, serving, title, wait_for
from prefork.loader import load_handler
from prefork.servers import serve_together

TESTS = os.path.join(REPO, "tests")

MODULE = '''\
import gc, os, prefork
VERSION = {version!r}
with open(os.environ["PREFORK_TEST_IMPORTS"], "a") as imports:
    imports.write(f"{{os.getpid()}}\\n")


class Handler(prefork.BaseRequestHandler):
    """Answer "VERSION worker-pid gc-freeze-count"."""

    def handle(self):
        self.request.recv(100)
        self.request.sendall(f"{{VERSION}} {{os.getpid()}} {{gc.get_freeze_count()}}\\n".encode())
'''


def write_module(directory, version=None, text=None):
    (directory / "versioned.py").write_text(text if text is not None else MODULE.format(version=version))


def importers(directory):
    path = directory / "imports"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def serve_versioned(serve_cli, tmp_path, *args, version="v1"):
    write_module(tmp_path, version)
    return serve_cli("versioned:Handler", "-b", "127.0.0.1:0", "--preload", *args, cwd=str(tmp_path),
                     env={"PREFORK_TEST_IMPORTS": str(tmp_path / "imports")})


def ask(address):
    version, pid, frozen = exchange("tcp", address, b"?\n").decode().split()
    return version, int(pid), int(frozen)


def children(server, kind=""):
    """The master's live children whose process title starts with "prefork: KIND"."""
    return [pid for pid, state, cmdline in _children(server)
            if state != psutil.STATUS_ZOMBIE and cmdline.startswith(f"prefork: {kind}")]


def zombies(server):
    return [pid for pid, state, _ in _children(server) if state == psutil.STATUS_ZOMBIE]


def _children(server):
    """(pid, status, title) of each child of the master; one that went meanwhile is left out. A zombie
    stays in, titled "" (psutil cannot read its cmdline): zombies() would see none otherwise."""
    found = []
    for child in psutil.Process(server.pid).children():
        try:
            found.append((child.pid, child.status(), title(child)))
        except psutil.NoSuchProcess:
            pass
    return found


def one_zygote(server, other_than=()):
    """Wait for exactly one zygote, not one of other_than, that answered ready; its pid."""
    def found():
        pids = [pid for pid in children(server, "zygote") if pid not in other_than]
        ready = f"zygote {pids[0]} ready" in server.log() if len(pids) == 1 else False
        return pids[0] if ready and len(children(server, "zygote")) == 1 else None
    return wait_for(found, message=lambda: f"one ready zygote; log:\n{server.log()}")


def settled(server, workers):
    """workers ready workers, one zygote and its next worker, all the master's children; no zombie."""
    def check():
        every = set(children(server, "worker")) | set(children(server, "zygote")) | set(children(server, "next worker"))
        return (len(children(server, "worker")) == workers and len(children(server, "zygote")) == 1
                and len(children(server, "next worker")) == 1 and set(children(server)) == every
                and not zombies(server))
    wait_for(check, message=lambda: f"{workers} workers, a zygote and a next worker; log:\n{server.log()}")
    return server.wait_workers(workers)


# -- where the code runs -------------------------------------------------------------------

def test_the_zygote_imports_the_handler_the_master_never_does_and_workers_are_the_masters(serve_cli, tmp_path):
    server = serve_versioned(serve_cli, tmp_path, "-w", "2")
    address = server.addresses()[0]
    first = settled(server, 2)
    zygote = one_zygote(server)
    version, worker, frozen = ask(address)
    assert version == "v1" and worker in first and frozen > 0, "served by a worker of the frozen zygote"
    assert importers(tmp_path) == [zygote]
    for pid in first | {zygote}:
        assert psutil.Process(pid).ppid() == server.pid
    os.kill(min(first), signal.SIGKILL)                  # a respawn comes from the zygote too
    server.wait_replaced({min(first)}, 2)
    os.kill(server.pid, signal.SIGHUP)                   # and a reload imports in a new zygote
    second = server.wait_replaced(first, 2, timeout=20)
    new_zygote = one_zygote(server, other_than=(zygote,))
    assert importers(tmp_path) == [zygote, new_zygote] and server.pid not in importers(tmp_path)
    assert all(psutil.Process(pid).ppid() == server.pid for pid in second)
    server.wait_log(rf"zygote {zygote} of generation 0: its last worker is gone, stopping it")


def test_api_servers_keep_the_handler_the_program_imported(tmp_path):
    """A handler class given to the API was imported by the program, which is the master: no zygote."""
    config = prefork.Config(preload=True)
    server = prefork.TCPServer(("127.0.0.1", 0), ImportReport, policy=prefork.Prefork(workers=1), config=config)
    with serving(server, workers=1):
        worker, imported_by, frozen = map(int, exchange("tcp", server.server_address, b"?\n").split())
        assert imported_by == os.getpid() != worker and frozen > 0
        assert server.stats()["zygotes"] == []


def test_stats_show_the_zygote_and_its_generation(tmp_path, monkeypatch):
    """Through the API with a handler to load, as `prefork serve --preload` runs it."""
    write_module(tmp_path, "v1")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PREFORK_TEST_IMPORTS", str(tmp_path / "imports"))
    server = prefork.TCPServer(("127.0.0.1", 0), None, policy=prefork.Prefork(workers=1),
                               config=prefork.Config(preload=True))
    errors = []
    thread = threading.Thread(target=_serve, args=(server, lambda: load_handler("versioned:Handler"), errors),
                              daemon=True)
    thread.start()
    try:
        def zygote_of(generation):
            stats = server.stats()
            zygotes = [z for z in stats["zygotes"] if z["state"] == "ready"]
            workers = [w for w in stats["workers"] if w["state"] == "idle" and w["generation"] == generation]
            return zygotes if len(zygotes) == 1 and zygotes[0]["generation"] == generation and workers else None
        (first,) = wait_for(lambda: zygote_of(0), message=lambda: server.stats())
        assert importers(tmp_path) == [first["pid"]] and first["pid"] != os.getpid()
        server.reload()
        (second,) = wait_for(lambda: zygote_of(1), message=lambda: server.stats())
        assert second["pid"] != first["pid"] and server.stats()["master"]["generation"] == 1
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()
    assert not errors, errors
    wait_for(lambda: all(process_gone(c.pid) for c in psutil.Process().children(recursive=True)),
             message="no process left")


def _serve(server, loader, errors):
    try:
        serve_together([server], load_handler=loader)
    except BaseException as exc:
        errors.append(exc)


# -- reloading new code -------------------------------------------------------------------

def test_hup_loads_an_edited_module_and_a_broken_edit_leaves_the_old_code_serving(serve_cli, tmp_path):
    server = serve_versioned(serve_cli, tmp_path, "-w", "2")
    address = server.addresses()[0]
    first = settled(server, 2)
    write_module(tmp_path, "v2-edited")
    os.kill(server.pid, signal.SIGHUP)
    second = server.wait_replaced(first, 2, timeout=20)
    assert {ask(address)[:2] for _ in range(6)} <= {("v2-edited", pid) for pid in second}

    write_module(tmp_path, text="def broken(:\n")
    os.kill(server.pid, signal.SIGHUP)
    server.wait_log(r"SIGHUP: not reloading, the new code failed to load, the old workers keep serving: "
                    r"cannot import handler 'versioned:Handler': SyntaxError")
    assert {ask(address)[:2] for _ in range(6)} <= {("v2-edited", pid) for pid in second}
    assert set(server.wait_workers(2)) == second and server.log().count("not reloading") == 1
    assert server.proc.poll() is None

    write_module(tmp_path, "v3")                         # fixed: the next HUP goes through
    os.kill(server.pid, signal.SIGHUP)
    third = server.wait_replaced(second, 2, timeout=20)
    assert {ask(address)[0] for _ in range(4)} == {"v3"} and len(third) == 2
    assert server.stop() == 0


def test_a_handler_that_never_imports_backs_off_then_stops_with_exit_3(tmp_path):
    write_module(tmp_path, text="import no_such_dependency_for_prefork_tests\n")
    started = time.monotonic()
    returncode, _, stderr = run_cli("serve", "versioned:Handler", "-w", "1", "-b", "127.0.0.1:0", "--preload",
                                    "--max-boot-failures", "3", cwd=str(tmp_path))
    assert returncode == 3 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "prefork: error: no worker could boot (3 attempts): cannot import handler 'versioned:Handler': "
        "No module named 'no_such_dependency_for_prefork_tests'")
    assert stderr.count("zygote failed to boot") == 1, "the same cause is logged once"
    assert 0.1 + 0.2 <= time.monotonic() - started < 20, "zygotes retried with the boot backoff"


def test_a_worker_of_the_zygote_that_fails_at_once_is_a_boot_failure_of_that_worker(tmp_path):
    flag = tmp_path / "fail"
    flag.touch()
    write_module(tmp_path, "v1")
    env = dict(os.environ, PREFORK_TEST_EVENTS=str(tmp_path / "events"), PREFORK_TEST_FAIL_BOOT=str(flag),
               PREFORK_TEST_IMPORTS=str(tmp_path / "imports"), PYTHONPATH=TESTS)
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "prefork", "serve", "versioned:Handler", "-w", "2", "-b",
                           "127.0.0.1:0", "--preload", "--hooks", "apps.hooks_recorder", "--max-boot-failures", "3",
                           "--log-level", "debug"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3
    assert done.stderr.strip().splitlines()[-1] == (
        "prefork: error: no worker could boot (3 attempts): post_fork hook raised RuntimeError: "
        "post_fork hook failed on purpose")
    assert "not one of our workers" not in done.stderr and "worker 1 failed to boot" in done.stderr


# -- failures of the zygote and its next worker ----------------------------------------------

def load(address, stop, failures, served):
    while not stop.is_set():
        try:
            served.append(ask(address)[1])
        except (OSError, ValueError) as exc:
            failures.append(repr(exc))


def test_killing_the_zygote_drops_no_request_and_a_new_zygote_appears(serve_cli, tmp_path):
    server = serve_versioned(serve_cli, tmp_path, "-w", "2")
    address = server.addresses()[0]
    workers = settled(server, 2)
    zygote = one_zygote(server)
    stop, failures, served = threading.Event(), [], []
    clients = [threading.Thread(target=load, args=(address, stop, failures, served)) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: len(served) > 20)
        os.kill(zygote, signal.SIGKILL)
        new_zygote = one_zygote(server, other_than=(zygote,))
        count = len(served)
        wait_for(lambda: len(served) > count + 20)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    assert failures == [] and set(served) <= workers, "the workers kept serving, every request answered"
    server.wait_log(rf"zygote {zygote} of generation 0 died unexpectedly \(signal SIGKILL\); its workers keep "
                    r"serving, another zygote follows")
    assert importers(tmp_path) == [zygote, new_zygote]
    victim = min(workers)                                  # the new zygote forks the next worker
    os.kill(victim, signal.SIGKILL)
    replaced = server.wait_replaced({victim}, 2)
    assert ask(address)[0] == "v1" and psutil.Process(max(replaced - workers)).ppid() == server.pid


def test_a_next_worker_that_died_while_it_waited_is_replaced_at_once(serve_cli, tmp_path):
    server = serve_versioned(serve_cli, tmp_path, "-w", "1")
    address = server.addresses()[0]
    (worker,) = settled(server, 1)
    (waiting,) = children(server, "next worker")
    os.kill(waiting, signal.SIGKILL)
    wait_for(lambda: process_gone(waiting))
    os.kill(worker, signal.SIGKILL)
    (replacement,) = server.wait_replaced({worker}, 1)
    assert ask(address)[1] == replacement and replacement != waiting
    assert "failed to boot" not in server.log()


def test_workers_of_a_zygote_die_with_the_master_and_so_does_the_zygote(serve_cli):
    """PR_SET_PDEATHSIG refers to the thread that forked a process: a worker sets it once it is the
    master's child. Set any earlier, it would have fired when the zygote's middle process exited."""
    server = serve_cli("apps.handlers:DeathSignal", "-w", "2", "-b", "127.0.0.1:0", "--preload", cwd=TESTS)
    address = server.addresses()[0]
    workers = settled(server, 2)
    signal_number, _ = exchange("tcp", address, b"?\n").split()
    assert int(signal_number) == signal.SIGTERM and set(server.wait_workers(2)) == workers
    everyone = [c.pid for c in psutil.Process(server.pid).children()]
    assert len(everyone) == 4                                # 2 workers, the zygote, the next worker
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(5)
    wait_for(lambda: all(process_gone(pid) for pid in everyone), timeout=2,
             message="every process gone within 2 s of the master's death")


# -- leaks ---------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_no_zombie_fd_or_process_is_left_after_100_respawns_and_10_reloads(serve_cli, tmp_path):
    server = serve_versioned(serve_cli, tmp_path, "-w", "2")
    address = server.addresses()[0]
    workers = settled(server, 2)
    master = psutil.Process(server.pid)
    fds_before = master.num_fds()
    zygote_fds = psutil.Process(one_zygote(server)).num_fds()
    for _ in range(100):
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        workers = server.wait_replaced({victim}, 2)
    for n in range(10):
        write_module(tmp_path, f"v{n + 2}")
        os.kill(server.pid, signal.SIGHUP)
        workers = server.wait_replaced(workers, 2, timeout=20)
    workers = settled(server, 2)
    assert ask(address)[0] == "v11"
    wait_for(lambda: master.num_fds() == fds_before, message=lambda: f"fds {master.num_fds()} != {fds_before}")
    assert psutil.Process(one_zygote(server)).num_fds() == zygote_fds
    log = server.log()
    assert log.count("died unexpectedly") == 100 and log.count("exited (reload, exit code 0)") == 20
    assert log.count("its last worker is gone, stopping it") == 10 and "failed to boot" not in log
    everyone = [server.pid] + [c.pid for c in master.children(recursive=True)]
    assert server.stop() == 0
    assert all(process_gone(pid) for pid in everyone), "nothing outlives the master"


def test_a_zygote_whose_import_hangs_is_killed_at_the_boot_timeout_then_the_master_exits_3(tmp_path):
    """Before: the boot timeout did not apply to the zygote; the master sat with no worker, silent, for ever."""
    write_module(tmp_path, text="import time\ntime.sleep(3600)\n")
    started = time.monotonic()
    returncode, _, stderr = run_cli("serve", "versioned:Handler", "-w", "1", "-b", "127.0.0.1:0", "--preload",
                                    "--boot-timeout", "1", "--max-boot-failures", "2", cwd=str(tmp_path), timeout=30)
    elapsed = time.monotonic() - started
    assert returncode == 3 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == (
        "prefork: error: no worker could boot (2 attempts): not ready within the boot timeout of 1.0 s")
    assert 2.0 <= elapsed < 15, elapsed                # two boot timeouts of 1 s, then the exit


def test_a_log_rotation_reaches_the_zygote_and_the_workers_it_forks_later(serve_cli, tmp_path, short_tmp):
    """Before: USR1 reached the pool's workers only: the zygote, and every worker it forked after a
    rotation, kept writing to the rotated file until the next reload."""
    log = tmp_path / "app.log"
    control = os.path.join(short_tmp, "ctl.sock")
    server = serve_versioned(serve_cli, tmp_path, "-w", "1", "--log-file", str(log), "--control", control)
    wait_for(lambda: log.exists() and "worker 1 ready" in log.read_text())
    wait_for(lambda: len(children(server, "next worker")) == 1)
    (old_worker,) = children(server, "worker")
    (zygote,) = children(server, "zygote")
    log.rename(tmp_path / "app.log.1")
    assert run_cli("ctl", "--control", control, "reopen-logs")[0] == 0

    def writes_to_the_rotated_file(pid):
        try:
            return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith("app.log.1") for fd in os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError:                     # gone, or an fd closed under us
            return True
    wait_for(lambda: not writes_to_the_rotated_file(zygote), message="the zygote reopened its log")
    os.kill(old_worker, signal.SIGKILL)               # the replacement is the next worker, forked before
    new_worker = wait_for(lambda: [pid for pid in children(server, "worker") if pid != old_worker] and
                          "worker 1 ready" in log.read_text() and children(server, "worker")[0])
    wait_for(lambda: not writes_to_the_rotated_file(new_worker), message="the new worker reopened its log")
    assert children(server, "zygote") == [zygote]


EMBEDDED = '''
import signal, sys, threading
import prefork
from prefork.loader import load_handler
from prefork.servers import serve_together

server = prefork.TCPServer(("127.0.0.1", 0), None, policy=prefork.Prefork(workers=1),
                           config=prefork.Config(preload=True))
def stop_when_serving():
    while not [w for w in server.stats()["workers"] if w["state"] == "idle"]:
        threading.Event().wait(0.02)
    server.shutdown()
threading.Thread(target=stop_when_serving, daemon=True).start()
before = signal.getsignal(signal.SIGCHLD)
serve_together([server], load_handler=lambda: load_handler("versioned:Handler"))   # in the main thread
server.server_close()
print(int(before), int(signal.getsignal(signal.SIGCHLD)))
'''


def test_an_embedded_pool_with_zygotes_gives_sigchld_back_as_it_found_it(tmp_path):
    """Before: the master installed a SIGCHLD handler of its own to reap orphans and left it behind."""
    write_module(tmp_path, "v1")
    script = tmp_path / "embedded.py"
    script.write_text(EMBEDDED)
    proc = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, PREFORK_TEST_IMPORTS=str(tmp_path / "imports")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(int(signal.SIG_DFL))] * 2, proc.stdout


MANY_FDS = '''
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
for _ in range(1100):                          # every descriptor prefork opens from here on is past 1023
    os.set_inheritable(os.open(os.devnull, os.O_RDONLY), True)
os.execv(sys.argv[1], sys.argv[1:])
'''


def test_a_master_whose_descriptors_are_numbered_past_1023_keeps_working(tmp_path):
    """Before: select() on the zygote's socket, a pidfd or a deferred client raised ValueError past
    fd 1023, out of the master's loop: the master SIGKILLed every worker."""
    write_module(tmp_path, "v1")
    (tmp_path / "many_fds.py").write_text(MANY_FDS)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "many_fds.py"), sys.executable, "-m", "prefork", "serve",
             "versioned:Handler", "-w", "2", "-b", "127.0.0.1:0", "--preload", "--defer-accept"],
            cwd=str(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PREFORK_TEST_IMPORTS=str(tmp_path / "imports")))
    try:
        port = int(wait_for(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())).group(1))
        wait_for(lambda: log.read_text().count("ready (pid") >= 2, message=log.read_text)
        address = ("127.0.0.1", port)
        assert ask(address)[0] == "v1"
        victim = ask(address)[1]
        assert max(int(fd) for fd in os.listdir(f"/proc/{proc.pid}/fd")) > 1100
        os.kill(victim, signal.SIGKILL)             # its replacement is asked of the zygote
        wait_for(lambda: log.read_text().count("ready (pid") >= 3, message=log.read_text)
        os.kill(proc.pid, signal.SIGHUP)            # a new zygote, new workers
        wait_for(lambda: "generation 1 loaded" in log.read_text(), message=log.read_text)
        assert {ask(address)[0] for _ in range(4)} == {"v1"}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = log.read_text()
    assert "Traceback" not in text and "out of range" not in text, text
    assert text.count("[ERROR]") == 1 and f"(pid {victim}) died unexpectedly (signal SIGKILL)" in text, text


@pytest.mark.parametrize("connects", [True, False])
def test_a_connection_opened_at_import_time_is_named_in_one_warning_per_import(serve_cli, connects):
    database = socket.create_server(("127.0.0.1", 0))
    port = database.getsockname()[1]
    env = {"PREFORK_TEST_CONNECT_TO": f"127.0.0.1:{port}"} if connects else {}
    server = serve_cli("apps.import_connection:Handler", "--preload", "-w", "2", "-b", "127.0.0.1:0", env=env,
                       cwd=TESTS)
    server.wait_workers(2)
    os.kill(server.pid, signal.SIGHUP)                 # a reload imports again: one warning per import
    server.wait_log("reloading 2 worker", timeout=15)
    server.wait_log(r"worker \d ready", count=4, timeout=15)
    database.close()
    named = re.findall(r"opened 1 connection\(s\) in the zygote, which every worker forked from it would share "
                       r"\(their bytes interleaved\): tcp 127\.0\.0\.1:(\d+); open them in a post_fork hook",
                       server.log())
    assert named == ([str(port)] * 2 if connects else [])
    assert connects or "in the zygote" not in server.log()
