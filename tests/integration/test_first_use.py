"""What a new user trips over: package names, signals outside pools, titles and slots, recipes."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import xmlrpc.client

import psutil
import pytest

from conftest import REPO, exchange, run_cli, wait_for

TESTS = os.path.join(REPO, "tests")
OWN_WORKERS_PACKAGE = {
    "workers/__init__.py": "",
    "workers/mine.py": "import prefork\n"
                       "class Handler(prefork.BaseRequestHandler):\n"
                       "    def handle(self):\n"
                       "        self.request.sendall(b'mine\\n')\n",
}


def a_project_with_its_own_workers_package(tmp_path):
    for name, text in OWN_WORKERS_PACKAGE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def serve_and_ask(serve_cli, cwd, handler, payload, env=None):
    args = ([handler] if handler else []) + ["-w", "1", "-b", "127.0.0.1:0"]
    server = serve_cli(*args, cwd=str(cwd), env=env)
    address = server.addresses()[0]
    server.wait_workers(1)
    return exchange("tcp", address, payload)


def test_a_project_with_its_own_workers_package_serves_the_default_and_its_own(serve_cli, tmp_path):
    project = a_project_with_its_own_workers_package(tmp_path)
    assert serve_and_ask(serve_cli, project, None, b"ping\n") == b"ping\n"              # the built-in echo
    assert serve_and_ask(serve_cli, project, "workers.mine:Handler", b"x\n") == b"mine\n"
    reply = serve_and_ask(serve_cli, project, "hello", b"GET / HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.once
@pytest.mark.timeout(120)
def test_a_regular_install_claims_no_generic_top_level_name(serve_cli, tmp_path):
    """`pip install .` (not -e): what lands in site-packages, and that it still works beside a user's workers/."""
    target, source = tmp_path / "site", tmp_path / "source"
    # From a copy: pip builds in the source tree, and the checkout's must stay clean.
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "bench-results",
                                                                 "__pycache__", "docs", "tests", "scripts"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=100)
    top_level = {name for name in os.listdir(target) if not name.endswith((".dist-info", ".egg-info"))} - {"bin"}
    assert top_level == {"prefork", "prefork_workers"}, top_level
    project = a_project_with_its_own_workers_package(tmp_path / "project")
    env = {"PYTHONPATH": str(target)}
    assert serve_and_ask(serve_cli, project, None, b"ping\n", env=env) == b"ping\n"
    assert serve_and_ask(serve_cli, project, "workers.mine:Handler", b"x\n", env=env) == b"mine\n"


# -- every policy: a start-up line, a title, and a meaning for every signal --------------------

@pytest.mark.parametrize("policy", ["serial", "fork", "thread"])
def test_in_process_policies_log_start_name_themselves_and_survive_habitual_signals(serve_cli, policy):
    server = serve_cli("--policy", policy, "-b", "127.0.0.1:0")
    address = server.addresses()[0]
    server.wait_log(rf"server {server.pid} starting: echo, policy {policy}, listening on ")
    assert " ".join(psutil.Process(server.pid).cmdline()).startswith("prefork: server [echo]")
    for signum, logged in ((signal.SIGHUP, "SIGHUP ignored: policy .* has no workers to reload"),
                           (signal.SIGTTIN, "SIGTTIN ignored"), (signal.SIGTTOU, "SIGTTOU ignored"),
                           (signal.SIGUSR2, "SIGUSR2 ignored"), (signal.SIGWINCH, "SIGWINCH ignored"),
                           (signal.SIGUSR1, "SIGUSR1: reopened no log file")):
        os.kill(server.pid, signum)
        server.wait_log(logged)
        assert psutil.Process(server.pid).status() != psutil.STATUS_STOPPED, signal.Signals(signum).name
    assert exchange("tcp", address) == b"hello\n"
    assert server.stop(signal.SIGTERM) == 0
    assert server.log().rstrip().endswith(f"server {server.pid} stopped")


def test_slots_stay_one_to_n_across_a_reload_and_generation_counts_reloads(serve_cli, tmp_path):
    events = tmp_path / "events"
    server = serve_cli("-w", "3", "-b", "127.0.0.1:0", "--hooks", "apps.hooks_recorder", cwd=TESTS,
                       env={"PREFORK_TEST_EVENTS": str(events)})
    first = server.wait_workers(3)
    os.kill(server.pid, signal.SIGHUP)
    second = server.wait_replaced(first, 3, timeout=20)
    titles = sorted(" ".join(psutil.Process(pid).cmdline()).strip() for pid in second)
    assert titles == [f"prefork: worker {n} [echo]" for n in (1, 2, 3)], titles
    post_forks = [line.split() for line in events.read_text().splitlines() if line.startswith("post_fork")]
    assert {(pid, gen) for _, pid, _, gen in post_forks} == \
        {(str(p), "0") for p in first} | {(str(p), "1") for p in second}
    os.kill(server.pid, signal.SIGHUP)
    third = server.wait_replaced(second, 3, timeout=20)
    post_forks = [line.split() for line in events.read_text().splitlines() if line.startswith("post_fork")]
    assert {gen for _, pid, _, gen in post_forks if int(pid) in third} == {"2"}


def test_stats_in_a_worker_say_what_a_worker_knows(serve_cli):
    server = serve_cli("apps.handlers:StatsInWorker", "-w", "1", "-b", "127.0.0.1:0", cwd=TESTS)
    address = server.addresses()[0]
    (worker,) = server.wait_workers(1)
    stats = json.loads(exchange("tcp", address, b"?\n"))
    assert stats["master"] == {"pid": server.pid, "name": "apps.handlers:StatsInWorker"}
    assert stats["worker"]["pid"] == worker and stats["worker"]["slot"] == 1
    assert stats["worker"]["state"] == "busy" and stats["worker"]["generation"] == 0


def test_a_hooks_module_with_no_hook_is_warned_about(serve_cli):
    server = serve_cli("-w", "1", "-b", "127.0.0.1:0", "--hooks", "apps.handlers", cwd=TESTS)
    server.wait_log(r"--hooks module 'apps.handlers' defines none of on_starting, pre_fork")


def test_a_unix_datagram_bind_is_named_as_such(serve_cli, short_tmp):
    path = os.path.join(short_tmp, "d.sock")
    server = serve_cli("-w", "1", "-b", f"unix-dgram:{path}", "-b", "udp://127.0.0.1:0")
    server.wait_log(rf"listening on unix-dgram:{re.escape(path)}, udp://127\.0\.0\.1:\d+")
    not_a_socket = os.path.join(short_tmp, "file")
    open(not_a_socket, "w").close()
    code, _, stderr = run_cli("serve", "-b", f"unix-dgram:{not_a_socket}")
    assert code == 1 and stderr.strip() == \
        f"prefork: error: cannot bind unix-dgram:{not_a_socket}: the path exists and is not a socket"


def test_the_default_bind_is_port_8000_on_localhost_and_the_environment_can_move_it(serve_cli):
    code, out, _ = run_cli("check-config")
    assert code == 0 and re.search(r"^bind +127\.0\.0\.1:8000 +default$", out, re.M)
    server = serve_cli(env={"PREFORK_BIND": "127.0.0.1:0", "PREFORK_WORKERS": "1"})
    server.wait_workers(1)
    assert exchange("tcp", server.addresses()[0], b"one\ntwo\n") == b"one\ntwo\n"


def test_a_misspelled_environment_variable_is_warned_about_and_others_of_the_prefix_are_not():
    env = dict(os.environ, PREFORK_WROKERS="3", PREFORK_SOMETHING_ELSE="x", PREFORK_WORKERS="2")
    proc = subprocess.run([sys.executable, "-m", "prefork", "check-config"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0 and re.search(r"^workers +2 +environment PREFORK_WORKERS$", proc.stdout, re.M)
    assert proc.stderr == ("prefork: warning: PREFORK_WROKERS is not a setting "
                           "(did you mean PREFORK_WORKERS?); ignored\n")


# -- recipes: the standard library's servers behind a pool ----------------------------------------

def test_recipe_http_server_from_the_command_line(serve_cli, tmp_path):
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    server = serve_cli("http.server:SimpleHTTPRequestHandler", "-w", "2", "-b", "127.0.0.1:0", cwd=str(tmp_path))
    port = server.addresses()[0][1]
    server.wait_workers(2)
    reply = _get(port, "/index.html")
    assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"<h1>hi</h1>")


RECIPES = """
import functools, http.server, sys, xmlrpc.server
import prefork

class HTTPServer(prefork.TCPServer, http.server.HTTPServer):
    pass

class RPCServer(prefork.TCPServer, xmlrpc.server.SimpleXMLRPCServer):
    pass

handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
web = HTTPServer(("127.0.0.1", 0), handler, policy=prefork.Prefork(workers=2))
rpc = RPCServer(("127.0.0.1", 0), logRequests=False, policy=prefork.Prefork(workers=2))
rpc.register_function(pow)
rpc.register_function(lambda: __import__("os").getpid(), "pid")
print(web.server_address[1], rpc.server_address[1], flush=True)
prefork.serve_together([web]) if sys.argv[2] == "web" else rpc.serve_forever()
"""


@pytest.mark.parametrize("which", ["web", "rpc"])
def test_recipe_http_and_xmlrpc_servers_from_the_api(tmp_path, which):
    (tmp_path / "index.html").write_text("<h1>api</h1>")
    proc = subprocess.Popen([sys.executable, "-c", RECIPES, str(tmp_path), which], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        web_port, rpc_port = map(int, proc.stdout.readline().split())
        if which == "web":
            reply = wait_for(lambda: _get(web_port, "/index.html"))
            assert reply.startswith(b"HTTP/1.0 200 OK") and reply.endswith(b"<h1>api</h1>")
        else:
            client = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{rpc_port}")
            assert client.pow(2, 10) == 1024
            assert client.pid() in {c.pid for c in psutil.Process(proc.pid).children()}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        reply = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return reply
            reply += data


def test_a_policy_the_class_cannot_honour_is_refused_with_the_fix():
    import http.server

    import prefork
    with pytest.raises(TypeError, match=r"class S\(prefork.TCPServer, HTTPServer\)"):
        class S(prefork.ThreadingMixIn, http.server.HTTPServer):
            policy = prefork.Prefork(workers=2)
    class Fine(prefork.ThreadingMixIn, http.server.HTTPServer):      # no policy: socketserver's threads
        pass
    assert Fine.policy == prefork.ThreadPerRequest()


def test_the_readmes_config_file_example_is_valid(tmp_path):
    readme = open(os.path.join(REPO, "README.md")).read()
    example = re.search(r"```toml\n(# prefork.toml.*?)```", readme, re.S).group(1)
    (tmp_path / "prefork.toml").write_text(example)
    code, out, err = run_cli("check-config", "-c", str(tmp_path / "prefork.toml"))
    assert code == 0, err
    assert re.search(r"^workers +4 +file ", out, re.M) and re.search(r"^timeout +60.0 +file ", out, re.M)


def test_the_readmes_first_api_example_starts_again_at_once_after_serving_a_client(tmp_path):
    """Stopped with Ctrl-C while a client is connected, the example leaves that connection in TIME_WAIT on
    its port; socketserver's allow_reuse_address = False then refused the next start for a minute."""
    readme = open(os.path.join(REPO, "README.md")).read()
    example = re.search(r"```python\n(.*?)```", readme.split("## The Python API", 1)[1], re.S).group(1)
    with socket.socket() as probe:            # a port free now; the example names 9000
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert example.count("9000") == 1
    (tmp_path / "example.py").write_text(example.replace("9000", str(port)))

    def start():
        return subprocess.Popen([sys.executable, "example.py"], cwd=str(tmp_path), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def echoed_or_exited(proc):
        if proc.poll() is not None:
            return "exited"
        try:
            return exchange("tcp", ("127.0.0.1", port), b"ping\n") == b"ping\n" and "serving"
        except OSError:
            return None

    first = start()
    try:
        assert wait_for(lambda: echoed_or_exited(first)) == "serving", first.communicate()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"hello\n")
        assert client.recv(100) == b"hello\n"
        os.killpg(first.pid, signal.SIGINT)               # Ctrl-C in its terminal
        first.wait(10)
        client.close()
        wait_for(lambda: any(c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
                             for c in psutil.net_connections("tcp")), message=f"a TIME_WAIT on port {port}")
        second = start()
        try:
            state = wait_for(lambda: echoed_or_exited(second))
            assert state == "serving", second.communicate()[1]
            os.kill(second.pid, signal.SIGTERM)
            assert second.wait(10) == 0
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
                second.wait(5)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(5)
