#!/usr/bin/env python3
"""prefork side by side with socketserver, gunicorn and nginx, in one run on one machine.

    python scripts/bench.py              # the full run: 3 interleaved rounds of 5 s, about 12 minutes
    python scripts/bench.py --quick      # proves the harness works: 1 round of 1 s (CI runs this)

Workloads (every server has 2 worker processes):
  http-close      wrk, 50 connections, a new connection per request (Connection: close)
  http-keepalive  wrk, 50 keep-alive connections
  echo-short      64-byte line echo, a new connection per line (scripts/echo_load.c)
  echo-long       64-byte line echo on 50 long-lived connections
  respawn         SIGKILL the only worker; time until its replacement answers
  memory          unique memory (USS) per worker, with and without --preload
  reload          SIGHUP under load with the handler edited on disk (scripts/reload_under_load.py)
  idle            CPU used by an idle master and its workers
  many-connections  thousands of idle keep-alive connections parked, paced line clients, a
                  HUP with 1,000 connections open, wrk -c1000 (scripts/many_connections.py)
  wsgi-close      wrk as in http-close, on the WSGI app scripts/wsgi_hello.py: prefork --wsgi (2x1,
                  --preload), gunicorn sync and gthread, uWSGI
  wsgi-keepalive  the same with 50 keep-alive connections
  wsgi-flask-close, wsgi-flask-keepalive  the same two on the Flask app scripts/wsgi_flask.py
  (--only wsgi selects the four; --quick runs wsgi-keepalive only, which starts every WSGI server,
  to stay short)

"The handler imported by the master" (scripts/master_preload.py) is what
--preload did before the zygote, and what a program using the API does.

Each throughput figure is the median of the rounds; within a round the servers
run one after another, so drift over the run touches all of them alike. The
load generator shares the machine's cores with the server, so compare ratios,
not absolute numbers. Results: a table on stdout, and a JSON file with every
figure and the machine's description (bench-results/).

What it needs, and how it gets it: wrk and nginx from Debian's packages
(installed with apt-get when running as root, else reported missing), gunicorn
from PyPI into .bench/venv, and a C compiler for echo_load. A workload whose
tool is missing is skipped with a line saying what to install.

The WSGI workloads also need Debian's uwsgi and uwsgi-plugin-python3 (apt-get,
as for wrk), and for the Flask app one version of Flask in three places: in
.bench/venv for gunicorn, in this interpreter for prefork (pip-installed when
missing), and in .bench/uwsgi-venv-3.X, a venv made with the /usr/bin/python3.X
that Debian's plugin embeds (found with ldd), which uWSGI gets as --virtualenv.
A server that cannot have one of these is left out of the workloads that need
it, and its targets read "not measured".

uWSGI runs as --master --processes 2 --disable-logging --plugin python3 and
speaks HTTP itself, without its HTTP router (--http) in front, as prefork and
gunicorn do; --die-on-term so that SIGTERM stops it (uWSGI 2.0 reloads on
it), --need-app so that an app that fails to import stops it rather than
answering 500s, and --listen 2048, the backlog of prefork and gunicorn.
New connection per request: --http-socket, which closes every connection
after its response, with --add-header "Connection: close": without the
header (which HTTP/1.1 asks of a server that closes) wrk reuses the
connection, finds it closed, and counts a read error per request.
Keep-alive: --http-keepalive is an option of the HTTP router (--http): with
--plugin http uwsgi accepts it, and --http-socket still closes each
connection after its response. --http11-socket keeps them open (it closes on
HTTP/1.0 and on a pipelined request, and ignores a request's Connection:
close, hence --http-socket for the close workloads). But --http11-socket
holds each connection in one of a worker's cores until it has been idle for
--socket-timeout (4 s): 2 processes serve 2 of wrk's 50 connections while the
other 48 wait in the accept queue (wrk counts no error for them in rounds
shorter than its 5 s timeout). So the keep-alive workloads run uWSGI twice:
2x1, whose figure is that of 2 connections, and 2x25 threads (--threads 25),
which holds all 50, as gunicorn gthread x25 does; the targets compare prefork
with the 2x25 one. (uWSGI's async mode, --async 25 --ugreen, the nearest to
prefork's parking, crashed in its async loop with Debian's 2.0.21.)
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

from _http import http_get

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
CACHE = os.path.join(REPO, ".bench")
RESULTS = os.path.join(REPO, "bench-results")
CONNECTIONS = 50
THREADS = 25                # per worker in the threaded pools: 2 x 25 holds 50 keep-alive connections
PY = sys.executable


# -- tools ------------------------------------------------------------------------

class Tools:
    """Finds or installs what the workloads need; remembers what is missing and why."""

    def __init__(self, install, wsgi=False, flask=False):
        self.missing = []
        self.wrk = self._debian("wrk", "wrk", install)
        self.nginx = self._debian("nginx", "nginx", install)
        self.gunicorn = self._gunicorn(install)
        self.echo_load = self._echo_load()
        # Only when a WSGI workload is wanted: uWSGI and Flask take a while to install.
        self.uwsgi = self._uwsgi(install) if wsgi else None
        self.prefork_wsgi = self._prefork_wsgi() if wsgi else False
        self.flask = self._flask(install) if flask else {}

    def _debian(self, command, package, install, find=None):
        find = find or (lambda: shutil.which(command) or shutil.which(command, path="/usr/sbin"))
        found = find()
        if found or not install:
            return found or self._miss(command, f"apt-get install {package}")
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            return self._miss(command, f"apt-get install {package} (as root)")
        print(f"installing {package} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True)
        return find() or self._miss(command, f"apt-get install {package} failed: {done.stderr.strip()[-200:]}")

    def _uwsgi(self, install):
        """Debian's uwsgi with its python3 plugin (which embeds Debian's Python, not this one)."""
        uwsgi = self._debian("uwsgi", "uwsgi", install)
        plugin = uwsgi and self._debian("uwsgi's python3 plugin", "uwsgi-plugin-python3", install,
                                        find=lambda: os.path.exists(UWSGI_PLUGIN) and UWSGI_PLUGIN)
        return uwsgi if plugin else None

    def _prefork_wsgi(self):
        """Whether this prefork's serve has --wsgi (being written when these workloads were)."""
        done = subprocess.run([PY, "-m", "prefork", "serve", "--help"], capture_output=True, text=True, timeout=60)
        if "--wsgi" in done.stdout:
            return True
        self._miss("prefork serve --wsgi", "not in this prefork (python -m prefork serve --help): update prefork")
        return False

    def _flask(self, install):
        """One version of Flask where each server imports it: {server: ready, "version": ...}.

        gunicorn: .bench/venv, which gets pip's newest; prefork: this interpreter;
        uWSGI: a venv made with the Python its plugin embeds (uwsgi_python()),
        given to uWSGI as --virtualenv. Those two get the same version.
        """
        found = {}
        if self.gunicorn:
            found["version"] = self._pip_flask("gunicorn (.bench/venv)", os.path.join(CACHE, "venv", "bin", "python"),
                                               install)
            found["gunicorn"] = bool(found["version"])
        ours = self._pip_flask("prefork (this interpreter)", PY, install, found.get("version"))
        found["prefork"], found["version"] = bool(ours), found.get("version") or ours
        if self.uwsgi:
            python = uwsgi_python()
            venv = os.path.join(CACHE, "uwsgi-venv-" + python.rsplit("python", 1)[1])
            venv_python = os.path.join(venv, "bin", "python")
            if not os.path.exists(venv_python) and not install:
                self._miss("flask for uWSGI", f"{python} -m venv {venv}, then pip install flask into it")
            elif not os.path.exists(venv_python):
                made = subprocess.run([python, "-m", "venv", venv], capture_output=True, text=True)
                if made.returncode != 0:
                    self._miss(f"a venv of {python} for uWSGI's Flask", f"apt-get install "
                               f"{os.path.basename(python)}-venv ({made.stderr.strip()[-200:]})")
            if os.path.exists(venv_python) and self._pip_flask(f"uWSGI ({os.path.relpath(venv, REPO)})",
                                                               venv_python, install, found.get("version")):
                found["uwsgi"] = venv
        return found

    def _pip_flask(self, where, python, install, version=None):
        """Flask's version importable by python, after pip-installing it (==version) when allowed; or None."""
        def installed():
            done = subprocess.run([python, "-c", "import flask, importlib.metadata as m; print(m.version('flask'))"],
                                  capture_output=True, text=True)
            return done.stdout.strip() if done.returncode == 0 else None
        if installed() or not install:
            return installed() or self._miss(f"flask for {where}", f"{python} -m pip install flask")
        spec = f"flask=={version}" if version else "flask"
        print(f"installing {spec} for {where} ...", flush=True)
        done = subprocess.run([python, "-m", "pip", "install", "-q", spec], capture_output=True, text=True)
        return installed() or self._miss(f"flask for {where}", f"{python} -m pip install {spec} failed: "
                                                                f"{done.stderr.strip()[-200:]}")

    def _gunicorn(self, install):
        venv = os.path.join(CACHE, "venv")
        gunicorn = os.path.join(venv, "bin", "gunicorn")
        if os.path.exists(gunicorn) or not install:
            return gunicorn if os.path.exists(gunicorn) else self._miss("gunicorn", "pip install gunicorn")
        print("installing gunicorn into .bench/venv ...", flush=True)
        made = subprocess.run([PY, "-m", "venv", venv], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "gunicorn"],
                                  capture_output=True, text=True)
        if made.returncode != 0 or not os.path.exists(gunicorn):
            return self._miss("gunicorn", f"pip install gunicorn failed: {made.stderr.strip()[-200:]}")
        return gunicorn

    def _echo_load(self):
        binary, why = build_echo_load()
        return binary or self._miss("echo_load", why)

    def _miss(self, what, how):
        self.missing.append(f"{what}: {how}")
        return None

    def versions(self):
        def first_line(argv):
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                return (done.stdout + done.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                return None
        return {"wrk": self.wrk and first_line([self.wrk, "--version"]),
                "nginx": self.nginx and first_line([self.nginx, "-v"]),
                "gunicorn": self.gunicorn and first_line([self.gunicorn, "--version"]),
                "uwsgi": self.uwsgi and first_line([self.uwsgi, "--version"]),
                "uwsgi_python": self.uwsgi and uwsgi_python(),
                "flask": self.flask.get("version")}


UWSGI_PLUGIN = "/usr/lib/uwsgi/plugins/python3_plugin.so"      # Debian's uwsgi-plugin-python3


def uwsgi_python():
    """The /usr/bin/python3.X whose libpython Debian's uWSGI plugin links (ldd says), else /usr/bin/python3."""
    try:
        linked = subprocess.run(["ldd", UWSGI_PLUGIN], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        linked = ""
    match = re.search(r"libpython(3\.\d+)", linked)
    return f"/usr/bin/python{match.group(1)}" if match and os.path.exists(f"/usr/bin/python{match.group(1)}") \
        else "/usr/bin/python3"


def build_echo_load():
    """scripts/echo_load.c compiled into .bench/echo_load, again whenever the source is newer.

    (path, None), or (None, what is missing); a function of its own so that
    scripts/many_connections.py builds it without Tools' installing.
    """
    source, binary = os.path.join(SCRIPTS, "echo_load.c"), os.path.join(CACHE, "echo_load")
    if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(source):
        return binary, None
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "a C compiler (apt-get install gcc)"
    os.makedirs(CACHE, exist_ok=True)
    built = subprocess.run([compiler, "-O2", "-o", binary, source], capture_output=True, text=True)
    return (binary, None) if built.returncode == 0 else (None, f"cc failed: {built.stderr[-200:]}")


# -- servers ------------------------------------------------------------------------

def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefork_cmd(handler, *flags):
    return lambda port: [PY, "-m", "prefork", "serve", handler, "-b", f"127.0.0.1:{port}",
                         "--log-level", "warning", *flags]


def stdlib_cmd(kind, handler):
    return lambda port: [PY, os.path.join(SCRIPTS, "stdlib_server.py"), kind, str(port), handler]


def gunicorn_cmd(tools, *flags, workers=2, app="wsgi_hello:app"):
    return lambda port: [tools.gunicorn, "--chdir", SCRIPTS, "-b", f"127.0.0.1:{port}", "--log-level", "warning",
                         "-w", str(workers), *flags, *([app] if app else [])]


def nginx_cmd(tools, workdir):
    def command(port):
        conf = os.path.join(workdir, f"nginx-{port}.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(port=port, tmp=workdir))
        return [tools.nginx, "-c", conf, "-p", workdir]
    return command


NGINX_CONF = """
worker_processes 2;
daemon off;
pid {tmp}/nginx-{port}.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        location / {{ default_type text/plain; return 200 "Hello, World!"; }}
    }}
}}
"""


class Server:
    """One server under test, started in its own session so that stopping it stops all of it."""

    def __init__(self, name, command, peer):
        self.name, self.command, self.peer = name, command, peer
        self.proc = None

    def start(self):
        self.port = free_port()
        # stderr to a file, not a pipe nobody reads: a server that logs much would block once it is full.
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command(self.port), cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                time.sleep(0.3)       # let every worker finish booting
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port}")

    def log_tail(self, size=500):
        """The last size bytes the server wrote to stderr (pread: the server's file offset stays put)."""
        end = os.fstat(self.log.fileno()).st_size
        return os.pread(self.log.fileno(), size, max(0, end - size)).decode(errors="replace")

    def processes(self):
        root = psutil.Process(self.proc.pid)
        return root, [c for c in root.children(recursive=True) if _alive(c)]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass


def _alive(process):
    """Not a zombie, and not gone since it was listed (a zygote's short-lived middle process, say)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def http_servers(tools, workdir, keep_alive):
    hello = "prefork_workers.hello:HelloHandler"
    # hello parks (prefork.ParkingRequestHandler): one thread per worker holds every keep-alive connection.
    servers = [Server("prefork 2x1", prefork_cmd(hello, "-w", "2", "--preload"), peer=False)]
    servers += [
        Server(f"prefork 2x{THREADS} threads", prefork_cmd(hello, "-w", "2", "--threads", str(THREADS),
                                                           "--preload"), peer=False),
        Server("prefork fork-per-request", prefork_cmd(hello, "--policy", "fork", "--preload"), peer=False),
        Server("socketserver Forking", stdlib_cmd("forking", hello), peer=True),
        Server("socketserver Threading", stdlib_cmd("threading", hello), peer=True),
    ]
    if tools.gunicorn:
        servers += [Server("gunicorn sync", gunicorn_cmd(tools, "-k", "sync"), peer=True),
                    Server(f"gunicorn gthread x{THREADS}", gunicorn_cmd(tools, "-k", "gthread", "--threads",
                                                                       str(THREADS)), peer=True)]
    if tools.nginx:
        servers.append(Server("nginx", nginx_cmd(tools, workdir), peer=True))
    return servers


def prefork_wsgi_cmd(app, *flags):
    """prefork serve --wsgi, with scripts/ on the import path (where the apps are)."""
    return _in_dir(lambda port: [PY, "-m", "prefork", "serve", "--wsgi", app, "-b", f"127.0.0.1:{port}",
                                 "--log-level", "warning", *flags], SCRIPTS)


def uwsgi_cmd(tools, app, keep_alive, threads=1, venv=None):
    """uWSGI speaking HTTP itself; the module docstring says why these options."""
    with open("/proc/sys/net/core/somaxconn") as f:
        backlog = min(2048, int(f.read()))            # uWSGI refuses a --listen above somaxconn
    socket_kind = ["--http11-socket"] if keep_alive else ["--add-header", "Connection: close", "--http-socket"]
    return lambda port: [tools.uwsgi, "--plugin", "python3", *socket_kind, f"127.0.0.1:{port}", "--master",
                         "--processes", "2", "--disable-logging", "--die-on-term", "--need-app",
                         "--listen", str(backlog), "--pythonpath", SCRIPTS, "--module", app,
                         *(["--threads", str(threads)] if threads > 1 else []),
                         *(["--virtualenv", venv] if venv else [])]


def wsgi_servers(tools, app, keep_alive, flask=False):
    """The same WSGI app (module:app in scripts/) under each server, 2 worker processes each."""
    can = (lambda server: tools.flask.get(server)) if flask else (lambda server: True)
    servers = []
    if tools.prefork_wsgi and can("prefork"):
        servers.append(Server("prefork --wsgi 2x1", prefork_wsgi_cmd(app, "-w", "2", "--preload"), peer=False))
    if tools.gunicorn and can("gunicorn"):
        servers += [Server("gunicorn sync", gunicorn_cmd(tools, "-k", "sync", app=app), peer=True),
                    Server(f"gunicorn gthread x{THREADS}", gunicorn_cmd(tools, "-k", "gthread", "--threads",
                                                                       str(THREADS), app=app), peer=True)]
    if tools.uwsgi and can("uwsgi"):
        venv = tools.flask["uwsgi"] if flask else None
        servers.append(Server("uWSGI 2x1", uwsgi_cmd(tools, app, keep_alive, venv=venv), peer=True))
        if keep_alive:
            servers.append(Server(f"uWSGI 2x{THREADS} threads", uwsgi_cmd(tools, app, keep_alive, THREADS, venv),
                                  peer=True))
    return servers


# --quick (CI's run, whose time is bounded) runs this one only, unless told: it starts every WSGI server;
# the others run the same code on the same servers (and Flask is served in the test suite).
QUICK_WSGI = ("wsgi-keepalive",)
WSGI_WORKLOADS = {                  # name: (module:app in scripts/, a new connection per request, its reply)
    "wsgi-close": ("wsgi_hello:app", True, b"Hello, World!"),
    "wsgi-keepalive": ("wsgi_hello:app", False, b"Hello, World!"),
    "wsgi-flask-close": ("wsgi_flask:app", True, b'"message":"Hello, World!"'),
    "wsgi-flask-keepalive": ("wsgi_flask:app", False, b'"message":"Hello, World!"'),
}


def echo_servers():
    echo = "prefork_workers.echo:EchoHandler"
    return [
        Server("prefork 2x1", prefork_cmd(echo, "-w", "2", "--preload"), peer=False),
        Server(f"prefork 2x{THREADS} threads", prefork_cmd(echo, "-w", "2", "--threads", str(THREADS), "--preload"),
               peer=False),
        Server("prefork fork-per-request", prefork_cmd(echo, "--policy", "fork", "--preload"), peer=False),
        Server("socketserver Forking", stdlib_cmd("forking", echo), peer=True),
        Server("socketserver Threading", stdlib_cmd("threading", echo), peer=True),
    ]


# -- load generators --------------------------------------------------------------------

def run_wrk(wrk, port, seconds, close, connections=CONNECTIONS, scheme="http"):
    argv = [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    out = subprocess.run(argv + [f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(rps.group(1)), "p50_ms": _wrk_latency(out, "50%"), "p99_ms": _wrk_latency(out, "99%"),
            "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0)}


def _wrk_latency(out, label):
    match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not match:
        return None
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def run_echo(tools, port, seconds, mode):
    out = subprocess.run([tools.echo_load, "127.0.0.1", str(port), mode, str(CONNECTIONS), str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 30)
    result = json.loads(out.stdout)
    return {key: result[key] for key in ("rps", "p50_ms", "p99_ms", "errors", "served")}


# -- throughput workloads ------------------------------------------------------------------

def throughput(name, servers, run, rounds, seconds, check=None):
    """Run `run(port)` on every server, rounds times, interleaved; the median per server.

    check(port), if given, runs on each server once started: a server it raises RuntimeError for is
    left out; what it returns, a note (say, that the server does not keep connections alive), is
    printed and kept with the server's figures.
    """
    notes = {}
    started = []
    try:
        for server in servers:
            try:
                server.start()
            except RuntimeError as exc:
                print(f"  {server.name}: could not start: {exc}", flush=True)
                server.stop()
                continue
            started.append(server)
            try:
                notes[server.name] = check and check(server.port)
            except (RuntimeError, OSError) as exc:
                print(f"  {server.name}: left out: {exc}", flush=True)
                started.remove(server)
                server.stop()
            if notes.get(server.name):
                print(f"  {server.name}: {notes[server.name]}", flush=True)
        for server in started:          # warm up: imports, page cache, branch predictors
            run(server.port, 1)
        runs = {server.name: [] for server in started}
        for round_number in range(rounds):
            for server in started:
                runs[server.name].append(run(server.port, seconds))
            print(f"  {name}: round {round_number + 1}/{rounds} done", flush=True)
    finally:
        for server in started:
            server.stop()
    return {server.name: summarize(runs[server.name]) | {"peer": server.peer}
            | ({"note": notes[server.name]} if notes.get(server.name) else {}) for server in started}


def check_http(port, close, expect):
    """Two requests as wrk sends them, on one connection: the reply must be a 200 holding expect
    (else RuntimeError). A note (or None) when the server does not do what the workload is about:
    with close, closing the connection after its reply; without, answering the second request."""
    request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = _read_reply(sock)
        if not re.match(rb"HTTP/1\.[01] 200 ", reply) or expect not in reply:
            raise RuntimeError(f"unexpected reply {reply[:300]!r}")
        head = reply.split(b"\r\n\r\n", 1)[0]
        closing = re.search(rb"^connection:\s*close\s*$", head, re.I | re.M)
        sock.settimeout(2)
        try:
            sock.sendall(request)
            again = _read_reply(sock) if not close or not closing else sock.recv(1)
        except (OSError, RuntimeError):
            again = b""
    if close and again:
        return "kept the connection open after a Connection: close request" + (
            "" if closing else ", and its reply did not say Connection: close, so wrk reuses the connection")
    if close and not closing:
        return "closed the connection without saying Connection: close: wrk counts a read error per request"
    if not close and not again:
        return "does not keep connections alive: closed the connection after one reply"
    if not close and (answered := _answered_together(port, request, 3)) < 3:
        return (f"answered {answered} of 3 keep-alive connections opened together (within 1 s): each holds a "
                f"worker, so most of wrk's {CONNECTIONS} wait and its figure is that of {answered}")
    return None


def _answered_together(port, request, count, timeout=1.0):
    """How many of count connections, each sent request at once and kept open, are answered within timeout."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(request)
        deadline, answered = time.monotonic() + timeout, 0
        for sock in socks:
            try:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                answered += bool(_read_reply(sock))
            except (OSError, RuntimeError):
                pass
        return answered
    finally:
        for sock in socks:
            sock.close()


def _read_reply(sock):
    """One HTTP response from sock: its head, and a body of Content-Length bytes (else up to the close)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed after {data[:300]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"^content-length:\s*(\d+)", head, re.I | re.M)
    if not length:
        while chunk := sock.recv(65536):
            body += chunk
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed within the body of {head[:300]!r}")
        body += chunk
    return head + b"\r\n\r\n" + body


def summarize(runs):
    result = {"runs": runs, "rps": statistics.median(r["rps"] for r in runs),
              "errors": sum(r["errors"] for r in runs)}
    for key in ("p50_ms", "p99_ms", "served"):
        values = [r[key] for r in runs if r.get(key) is not None]
        result[key] = statistics.median(values) if values else None
    return result


# -- respawn, memory, idle ---------------------------------------------------------------------

def respawn(tools, repeats):
    """Median and max milliseconds from SIGKILL of the only worker to the next answered request."""
    hello = "prefork_workers.hello:HelloHandler"
    cases = [Server("prefork (handler imported by each worker)", prefork_cmd(hello, "-w", "1"), False),
             Server(MASTER_PRELOAD, master_preload_cmd(hello, 1), False),
             Server(ZYGOTE, prefork_cmd(hello, "-w", "1", "--preload"), False),
             Server(ZYGOTE_BACK_TO_BACK, prefork_cmd(hello, "-w", "1", "--preload"), False),
             Server("prefork --spare-workers 1", prefork_cmd(hello, "-w", "1", "--spare-workers", "1"), False)]
    if tools.gunicorn:
        cases += [Server("gunicorn sync", gunicorn_cmd(tools, "-k", "sync", workers=1), True),
                  Server("gunicorn sync --preload", gunicorn_cmd(tools, "-k", "sync", "--preload", workers=1), True)]
    results = {}
    for server in cases:
        server.start()
        try:
            samples = []
            back_to_back = server.name == ZYGOTE_BACK_TO_BACK
            expected = _settled_count(server)
            while len(samples) < repeats:
                _wait(lambda: len(_serving(server)) == 1 and len(server.processes()[1]) == expected)
                victim = _serving(server)[0]
                if back_to_back:
                    # Kill the replacement as soon as it has answered: within the zygote's
                    # NEXT_WORKER_DELAY, so its successor is double-forked while we wait.
                    _kill_and_ask(server, victim)
                    victim = _wait(lambda: next((pid for pid in _serving(server) if pid != victim), None))
                    if _titled(server, "prefork: next worker"):
                        continue                  # too slow: the next one was forked ahead already
                samples.append(_kill_and_ask(server, victim))
            results[server.name] = {"median_ms": statistics.median(samples), "max_ms": max(samples),
                                    "samples_ms": samples, "peer": server.peer}
        finally:
            server.stop()
    return results


MASTER_PRELOAD = "prefork, handler imported by the master (the --preload of before the zygote)"
ZYGOTE = "prefork --preload (zygote)"
ZYGOTE_BACK_TO_BACK = "prefork --preload (zygote), no next worker forked ahead"


def master_preload_cmd(handler, workers):
    return lambda port: [PY, os.path.join(SCRIPTS, "master_preload.py"), str(port), handler, str(workers)]


def _kill_and_ask(server, victim):
    """SIGKILL victim; milliseconds until the server answered a request; wait until the victim is gone."""
    started = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    reply = http_get(server.port, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    if not reply.endswith(b"Hello, World!"):
        raise RuntimeError(f"{server.name}: bad reply after respawn: {reply[-80:]!r}")
    _wait(lambda: victim not in [w.pid for w in server.processes()[1]])
    return elapsed


def _titles(server):
    """(pid, process title) of every live process under the server's main one."""
    found = []
    for process in server.processes()[1]:
        try:
            found.append((process.pid, " ".join(process.cmdline()).strip()))
        except psutil.NoSuchProcess:
            pass
    return found


def _is_worker(title):
    return title.startswith("prefork: worker") or "prefork:" not in title     # gunicorn's are all workers


def _serving(server):
    return [pid for pid, title in _titles(server) if _is_worker(title) and not title.endswith("(spare)")]


def _spares(server):
    return [pid for pid, title in _titles(server) if _is_worker(title) and title.endswith("(spare)")]


def _titled(server, prefix):
    return [pid for pid, title in _titles(server) if title.startswith(prefix)]


def _settled_count(server):
    """How many processes the server has when nothing is missing: its workers and spares, and with
    --preload the zygote and the next worker it forks ahead."""
    _wait(lambda: _titled(server, "prefork: next worker") or not _titled(server, "prefork: zygote"))
    return len(_serving(server)) + len(_spares(server)) + 2 * bool(_titled(server, "prefork: zygote"))


def memory(tools, seconds_to_settle=1.0):
    """Unique memory (USS) of each of 4 workers serving scripts/memory_app.py, and of the processes around them.

    A master's USS depends on its children as well as on itself: a page a
    worker copies on write leaves the master's original its own. Its RSS
    shows plainly whether it imported the application.
    """
    handler = "memory_app:LookupHandler"
    cases = [("prefork, handler imported by each worker", prefork_cmd(handler, "-w", "4"), _ask),
             ("prefork, handler imported by the master (the --preload of before the zygote)",
              master_preload_cmd(handler, 4), _ask),
             ("prefork --preload (zygote)", prefork_cmd(handler, "-w", "4", "--preload"), _ask)]
    if tools.gunicorn:
        cases += [("gunicorn sync", gunicorn_cmd(tools, "-k", "sync", "memory_app:app", workers=4, app=None),
                   _ask_http),
                  ("gunicorn sync --preload", gunicorn_cmd(tools, "-k", "sync", "--preload", "memory_app:app",
                                                           workers=4, app=None), _ask_http)]
    results = {}
    for label, command, ask in cases:
        server = Server(label, _in_dir(command, SCRIPTS), label.startswith("gunicorn"))
        server.start()
        try:
            for n in range(40):                 # touch the table in every worker
                ask(server.port, f"key-{n * 997}")
            time.sleep(seconds_to_settle)
            titles = dict(_titles(server))
            uss = {pid: psutil.Process(pid).memory_full_info().uss / 2**20 for pid in titles}
            workers = [uss[pid] for pid, title in titles.items() if _is_worker(title)]
            around = {what: [round(uss[pid], 1) for pid, title in titles.items() if title.startswith(f"prefork: {what}")]
                      for what in ("zygote", "next worker")}
            results[label] = {"worker_uss_mb": [round(u, 1) for u in workers],
                              "median_worker_uss_mb": round(statistics.median(workers), 1),
                              "master_uss_mb": round(server.processes()[0].memory_full_info().uss / 2**20, 1),
                              "master_rss_mb": round(server.processes()[0].memory_info().rss / 2**20, 1),
                              "zygote_uss_mb": around["zygote"][0] if around["zygote"] else None,
                              "next_worker_uss_mb": around["next worker"][0] if around["next worker"] else None,
                              "peer": server.peer}
        finally:
            server.stop()
    return results


def reload(tools, seconds):
    """scripts/reload_under_load.py on each server: failed requests, and answers from the old code."""
    sys.path.insert(0, SCRIPTS)
    import reload_under_load
    servers = ["prefork-preload", "prefork", "prefork-master-preload"]
    if tools.gunicorn:
        servers += ["gunicorn", "gunicorn-preload"]
    results = {}
    for name in servers:
        results[name] = reload_under_load.run(name, CONNECTIONS, seconds, tools.gunicorn)
        results[name]["peer"] = name.startswith("gunicorn")
        print(f"  {reload_under_load.describe(name, results[name])}", flush=True)
    return results


def many_connections(tools, quick):
    """scripts/many_connections.py: what parking buys, with thousands of connections open."""
    sys.path.insert(0, SCRIPTS)
    from many_connections import measure
    return measure(quick, tools.wrk)


def _in_dir(command, directory):
    """Run a prefork command with a directory on PYTHONPATH (scripts/ holds the memory app)."""
    def wrapped(port):
        argv = command(port)
        return ["env", f"PYTHONPATH={directory}"] + argv
    return wrapped


def _ask(port, line):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(line.encode() + b"\n")
        return sock.recv(4096)


def _ask_http(port, key):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET /{key} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        return sock.recv(4096)


def idle(tools, workdir, seconds):
    """Percent of one CPU used by an idle master and by all its workers together."""
    hello = "prefork_workers.hello:HelloHandler"
    cases = [Server("prefork 2x1", prefork_cmd(hello, "-w", "2"), False)]
    if tools.gunicorn:
        cases.append(Server("gunicorn sync", gunicorn_cmd(tools, "-k", "sync"), True))
    if tools.nginx:
        cases.append(Server("nginx", nginx_cmd(tools, workdir), True))
    results = {}
    for server in cases:
        server.start()
        try:
            time.sleep(1.0)
            master, workers = server.processes()
            before = [_cpu_seconds(p) for p in [master] + workers]
            time.sleep(seconds)
            after = [_cpu_seconds(p) for p in [master] + workers]
            used = [(b - a) / seconds * 100 for a, b in zip(before, after)]
            results[server.name] = {"master_cpu_percent": round(used[0], 4),
                                    "workers_cpu_percent": round(sum(used[1:]), 4),
                                    "seconds": seconds, "peer": server.peer}
        finally:
            server.stop()
    return results


def _cpu_seconds(process):
    """CPU time used so far, in nanoseconds' resolution where Linux offers it (schedstat);
    psutil's cpu_times counts 10 ms clock ticks, too coarse for an idle process."""
    try:
        with open(f"/proc/{process.pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        times = process.cpu_times()
        return times.user + times.system


def _wait(predicate, timeout=10):
    """The predicate's first true value, polled every 5 ms; RuntimeError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.005)
    return value


# -- report -------------------------------------------------------------------------------------

def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "cpu_model": model,
            "kernel": platform.release(), "python": platform.python_version(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def print_throughput(name, results):
    print(f"\n{name}  (median of rounds; {CONNECTIONS} connections; 2 worker processes each)")
    peers = [n for n, r in results.items() if r["peer"]]
    header = f"  {'server':<26}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'served':>8}"
    print(header + "".join(f"{'/' + p[:11]:>13}" for p in peers))
    for server, r in results.items():
        ratios = "".join(f"{r['rps'] / results[p]['rps']:>13.2f}" for p in peers)
        print(f"  {server:<26}{r['rps']:>10.0f}{_ms(r['p50_ms'])}{_ms(r['p99_ms'])}{r['errors']:>8}"
              f"{'' if r['served'] is None else r['served']:>8}" + ratios)
    print_notes(results)


def print_notes(results):
    for server, r in results.items():
        if r.get("note"):
            print(f"  note, {server}: {r['note']}")


def _ms(value):
    return f"{value:>9.2f}" if value is not None else f"{'-':>9}"


def targets(report):
    """The goals of the performance issue, each with the figure measured in this run."""
    lines = []

    def ratio(workload, ours, peer):
        results = report["workloads"].get(workload, {})
        if ours in results and peer in results:
            return results[ours]["rps"] / results[peer]["rps"]
        return None

    def check(text, value, goal, fmt="{:.2f}x", below=False):
        if value is None:
            lines.append(f"  [ n/a ] {text}: not measured (not run, or a tool is missing)")
        else:
            met = value < goal if below else value >= goal
            lines.append(f"  [{'met ' if met else 'MISS'}] {text}: {fmt.format(value)} (goal {fmt.format(goal)})")

    keep_alive = f"prefork 2x{THREADS} threads"
    check("http-close, prefork 2x1 vs gunicorn sync", ratio("http-close", "prefork 2x1", "gunicorn sync"), 2.0)
    check("http-close, prefork 2x1 vs nginx", ratio("http-close", "prefork 2x1", "nginx"), 0.6)
    check(f"http-keepalive, {keep_alive} vs socketserver Forking",
          ratio("http-keepalive", keep_alive, "socketserver Forking"), 1.0)
    check(f"http-keepalive, {keep_alive} vs nginx", ratio("http-keepalive", keep_alive, "nginx"), 0.5)
    check("http-keepalive, prefork 2x1 (parking) vs nginx", ratio("http-keepalive", "prefork 2x1", "nginx"), 0.8)
    check(f"http-keepalive, prefork 2x1 vs {keep_alive}", ratio("http-keepalive", "prefork 2x1", keep_alive), 1.0)
    wsgi, uwsgi_keep_alive = "prefork --wsgi 2x1", f"uWSGI 2x{THREADS} threads"
    for prefix in ("wsgi", "wsgi-flask"):
        close, keep = f"{prefix}-close", f"{prefix}-keepalive"
        check(f"{close}, {wsgi} vs gunicorn sync", ratio(close, wsgi, "gunicorn sync"), 2.0)
        check(f"{close}, {wsgi} vs uWSGI 2x1", ratio(close, wsgi, "uWSGI 2x1"), 1.0)
        check(f"{keep}, {wsgi} vs gunicorn gthread x{THREADS}", ratio(keep, wsgi, f"gunicorn gthread x{THREADS}"),
              1.5)
        check(f"{keep}, {wsgi} vs {uwsgi_keep_alive} (2x1 holds 2 of the 50 connections)",
              ratio(keep, wsgi, uwsgi_keep_alive), 1.0)
    respawns = report.get("respawn", {})
    zygote, in_master = respawns.get(ZYGOTE), respawns.get(MASTER_PRELOAD)
    check("respawn median, prefork --preload (zygote)", zygote and zygote["median_ms"], 5.0, "{:.2f} ms", below=True)
    check("respawn median, zygote vs the handler imported by the master",
          zygote and in_master and zygote["median_ms"] / in_master["median_ms"], 1.0, below=True)
    spawn = respawns.get("prefork (handler imported by each worker)")
    check("respawn median, prefork without --preload", spawn and spawn["median_ms"], 5.0, "{:.2f} ms",
          below=True)
    memory_figures = report.get("memory", {})
    zygote = memory_figures.get("prefork --preload (zygote)")
    in_master = memory_figures.get("prefork, handler imported by the master (the --preload of before the zygote)")
    lazy = memory_figures.get("prefork, handler imported by each worker")
    check("worker USS, zygote vs the handler imported by the master",
          zygote and in_master and zygote["median_worker_uss_mb"] / in_master["median_worker_uss_mb"], 1.5,
          fmt="{:.2f}x", below=True)
    check("master USS with a zygote vs a master that imports nothing (each worker imports)",
          zygote and lazy and zygote["master_uss_mb"] / lazy["master_uss_mb"], 1.1, fmt="{:.2f}x", below=True)
    check("master RSS with a zygote vs a master that imports nothing",
          zygote and lazy and zygote["master_rss_mb"] / lazy["master_rss_mb"], 1.1, fmt="{:.2f}x", below=True)
    reload_figures = report.get("reload", {}).get("prefork-preload")
    check("HUP under load with --preload: failed requests", reload_figures and reload_figures["failed"], 1,
          "{}", below=True)
    check("HUP under load with --preload: answers from the old code after the reload",
          reload_figures and reload_figures["old_code_after_reload"], 1, "{}", below=True)
    idle_cost = report.get("idle", {}).get("prefork 2x1")
    check("idle master CPU", idle_cost and idle_cost["master_cpu_percent"], 0.5, "{:.3f} %", below=True)
    many = report.get("many_connections", {})
    third, parked, paced, hup = (many.get(name) or {} for name in ("idle-third", "idle-10k", "echo-paced", "hup-1000"))
    check("idle-third: a third client's request beside 2 idle keep-alive clients, median",
          third.get("median_ms"), 10.0, "{:.2f} ms", below=True)
    check("idle-10k: wrk p99 with the idle connections parked", (parked.get("with") or {}).get("p99_ms"), 10.0,
          "{:.2f} ms", below=True)
    check("idle-10k: wrk throughput with the idle connections parked vs without",
          parked.get("throughput_ratio"), 0.9)
    check("idle-10k: worker USS per parked connection", parked.get("uss_per_connection"), 8192, "{:.0f} B",
          below=True)
    check("echo-paced: lines unanswered", paced.get("unanswered"), 1, "{}", below=True)
    check("echo-paced: p99", paced.get("p99_ms"), 10.0, "{:.2f} ms", below=True)
    check("hup-1000: connections closed by the reload", hup.get("closed"), 1, "{}", below=True)
    check("hup-1000: answered by a new worker after the reload",
          hup.get("opened") and hup["by_new"] / hup["opened"], 1.0, "{:.1%}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s: proves the harness works")
    parser.add_argument("--seconds", type=float, help="length of each measurement (default 5, quick 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--only", help="comma-separated workloads: http-close,http-keepalive,echo-short,"
                                       "echo-long,respawn,memory,reload,idle,many-connections,wsgi-close,"
                                       "wsgi-keepalive,wsgi-flask-close,wsgi-flask-keepalive; wsgi: those four")
    parser.add_argument("--no-install", action="store_true", help="use only what is already installed")
    parser.add_argument("--json", help="where to write the JSON results (default bench-results/bench-<time>.json)")
    args = parser.parse_args()
    seconds = args.seconds or (1 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 3)
    wanted = set(args.only.split(",")) if args.only else None
    if wanted and "wsgi" in wanted:
        wanted |= set(WSGI_WORKLOADS)

    def want(name):
        return wanted is None or name in wanted

    wsgi_workloads = [name for name in WSGI_WORKLOADS
                      if want(name) and not (args.quick and name not in QUICK_WSGI and not wanted)]
    tools = Tools(install=not args.no_install, wsgi=bool(wsgi_workloads),
                  flask=any("flask" in name for name in wsgi_workloads))
    for line in tools.missing:
        print(f"missing {line} -- the workloads that need it are skipped", flush=True)
    report = {"machine": machine(), "tools": tools.versions(), "seconds": seconds, "rounds": rounds,
              "connections": CONNECTIONS, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workloads": {}}
    workdir = tempfile.mkdtemp(prefix="prefork-bench-")
    seconds_int = max(1, int(round(seconds)))

    if tools.wrk:
        for name, close in (("http-close", True), ("http-keepalive", False)):
            if want(name):
                report["workloads"][name] = throughput(
                    name, http_servers(tools, workdir, keep_alive=not close),
                    lambda port, s, close=close: run_wrk(tools.wrk, port, max(1, int(round(s))), close),
                    rounds, seconds_int)
    if tools.echo_load:
        for name, mode in (("echo-short", "short"), ("echo-long", "long")):
            if want(name):
                report["workloads"][name] = throughput(
                    name, echo_servers(), lambda port, s, mode=mode: run_echo(tools, port, s, mode),
                    rounds, seconds)
    if tools.wrk:
        for name in wsgi_workloads:
            app, close, expect = WSGI_WORKLOADS[name]
            servers = wsgi_servers(tools, app, keep_alive=not close, flask="flask" in name)
            if not servers:
                print(f"  {name}: skipped, no server could run it (see the missing lines above)", flush=True)
                continue
            report["workloads"][name] = throughput(
                name, servers, lambda port, s, close=close: run_wrk(tools.wrk, port, max(1, int(round(s))), close),
                rounds, seconds_int, check=lambda port, close=close, expect=expect: check_http(port, close, expect))
        left_out = [name for name in WSGI_WORKLOADS if want(name) and name not in wsgi_workloads]
        if left_out:
            print(f"  {', '.join(left_out)}: left out of --quick (wsgi-keepalive ran the same servers); "
                  f"--only wsgi runs them", flush=True)
    if want("respawn"):
        report["respawn"] = respawn(tools, 5 if args.quick else 25)
    if want("memory"):
        report["memory"] = memory(tools)
    if want("reload"):
        report["reload"] = reload(tools, 0.5 if args.quick else 1.5)
    if want("idle"):
        report["idle"] = idle(tools, workdir, 2 if args.quick else 10)
    if want("many-connections"):
        report["many_connections"] = many_connections(tools, args.quick)

    print(f"\nmachine: {report['machine']}")
    for name, results in report["workloads"].items():
        print_throughput(name, results)
    print()
    for name, results in report.get("respawn", {}).items():
        print(f"respawn, {name}: median {results['median_ms']:.2f} ms, max {results['max_ms']:.2f} ms")
    for label, figures in report.get("memory", {}).items():
        zygote = (f", zygote USS {figures['zygote_uss_mb']} MB, next worker USS {figures['next_worker_uss_mb']} MB"
                  if figures["zygote_uss_mb"] is not None else "")
        print(f"memory, 4 workers, {label}: median worker USS {figures['median_worker_uss_mb']} MB "
              f"(each: {figures['worker_uss_mb']}), master USS {figures['master_uss_mb']} MB "
              f"(RSS {figures['master_rss_mb']} MB){zygote}")
    if report.get("reload"):
        sys.path.insert(0, SCRIPTS)
        from reload_under_load import describe
        for name, figures in report["reload"].items():
            print(describe(name, figures))
    if report.get("many_connections"):
        from many_connections import describe as describe_many
        print("\n".join(describe_many(report["many_connections"])))
    for name, figures in report.get("idle", {}).items():
        print(f"idle {figures['seconds']} s, {name}: master {figures['master_cpu_percent']:.3f} % of a CPU, "
              f"workers {figures['workers_cpu_percent']:.3f} %")
    report["targets"] = targets(report)
    print("\ntargets (from the performance issue):")
    print("\n".join(report["targets"]))
    os.makedirs(RESULTS, exist_ok=True)
    path = args.json or os.path.join(RESULTS, f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nall figures: {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
