#!/usr/bin/env python3
"""Reload under load: does a SIGHUP drop requests, and does it load the code edited on disk?

    python scripts/reload_under_load.py [--server prefork-preload] [--connections 50] [--seconds 1.5]

Writes a small HTTP app (reload_app.py: a socketserver handler and a WSGI
app answering its VERSION) into a temporary directory, serves it, and keeps
CONNECTIONS clients busy, each opening a new connection per request. Then:
a SIGHUP with the code unchanged; the module edited on disk (VERSION v2);
a second SIGHUP. A reload is complete when every worker alive before it is
gone and as many new ones serve. It reports the failed requests (refused,
reset, timed out, not a 200) and every answer from the old code to a request
that started after the second reload completed: both should be zero.

Servers: prefork-preload (the zygote), prefork (each worker imports),
prefork-master-preload (the handler imported in the master: the --preload of
before the zygote, scripts/master_preload.py), gunicorn and
gunicorn-preload (sync workers, gunicorn from scripts/bench.py's .bench/venv
or --gunicorn). The load generator is a thread per connection: crude, but it
only has to keep the server busy and count.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from _http import http_get

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = 2

APP = '''\
"""Answers its VERSION over HTTP: a socketserver handler (prefork) and a WSGI app (gunicorn)."""
import json, socketserver, xml.dom.minidom  # noqa: F401 -- some import weight, as a real app has

VERSION = {version!r}
BODY = VERSION.encode()


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        data = b""
        while b"\\r\\n\\r\\n" not in data:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            data += chunk
        self.request.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n%s"
                             % (len(BODY), BODY))


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", str(len(BODY)))])
    return [BODY]
'''


def write_app(directory, version):
    path = os.path.join(directory, "reload_app.py")
    with open(path + ".tmp", "w") as f:
        f.write(APP.format(version=version))
    os.replace(path + ".tmp", path)         # an edit lands whole, as a deploy's rename does


def command(server, port, gunicorn):
    py = [sys.executable, "-m", "prefork", "serve", "reload_app:Handler", "-b", f"127.0.0.1:{port}",
          "-w", str(WORKERS), "--log-level", "warning"]
    gunicorn_argv = [gunicorn, "-b", f"127.0.0.1:{port}", "-w", str(WORKERS), "--log-level", "warning",
                     "-k", "sync", "reload_app:app"]
    return {"prefork-preload": py + ["--preload"], "prefork": py,
            "prefork-master-preload": [sys.executable, os.path.join(REPO, "scripts", "master_preload.py"),
                                       str(port), "reload_app:Handler", str(WORKERS)],
            "gunicorn": gunicorn_argv, "gunicorn-preload": gunicorn_argv[:-1] + ["--preload", "reload_app:app"],
            }[server]


class Load:
    """CONNECTIONS threads, each: connect, GET, read to the end, record (start, version or failure)."""

    def __init__(self, port, connections):
        self.port = port
        self.stop = threading.Event()
        self.results = []                 # (started, "ok", version) or (started, "failed", why)
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(connections)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def _client(self):
        record = self.results.append
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                data = http_get(self.port, timeout=10)
                head, _, body = data.partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"):
                    record((started, "ok", body.decode(errors="replace")))
                else:
                    record((started, "failed", f"answer {head[:40]!r}"))
            except OSError as exc:
                record((started, "failed", type(exc).__name__))


def workers_of(master):
    """The master's live worker processes (not a zygote, nor a next worker), by pid."""
    found = set()
    for child in master.children():
        try:
            title = " ".join(child.cmdline())
            if child.status() != psutil.STATUS_ZOMBIE and ("prefork:" not in title or "prefork: worker" in title):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def reload_and_wait(proc, master, timeout=60):
    """SIGHUP; wait until every worker from before is gone and WORKERS new ones serve. Seconds it took."""
    before = workers_of(master)
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGHUP)
    wait_until(lambda: (lambda now: len(now) == WORKERS and not now & before)(workers_of(master)), timeout,
               "every worker replaced")
    return time.monotonic() - started


def run(server, connections=50, seconds=1.5, gunicorn=None):
    """One server through the scenario; a dict of figures."""
    gunicorn = gunicorn or os.path.join(REPO, ".bench", "venv", "bin", "gunicorn")
    if server.startswith("gunicorn") and not os.path.exists(gunicorn):
        raise RuntimeError(f"no gunicorn at {gunicorn} (scripts/bench.py installs it)")
    workdir = tempfile.mkdtemp(prefix="prefork-reload-")
    write_app(workdir, "v1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=workdir)
    proc = subprocess.Popen(command(server, port, gunicorn), cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        master = psutil.Process(proc.pid)
        wait_until(lambda: len(workers_of(master)) == WORKERS and _answers(port), 20, "the server to answer")
        with Load(port, connections) as load:
            time.sleep(seconds)
            first = reload_and_wait(proc, master)              # the same code
            time.sleep(seconds)
            write_app(workdir, "v2")
            second = reload_and_wait(proc, master)             # the edited code
            done = time.monotonic()
            time.sleep(seconds)
        results = list(load.results)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    failures = [why for _, status, why in results if status == "failed"]
    after = [version for started, status, version in results if status == "ok" and started >= done]
    return {"requests": len(results), "failed": len(failures), "failures": sorted(set(failures))[:5],
            "answers_after_reload": len(after), "old_code_after_reload": sum(1 for v in after if v != "v2"),
            "reload_seconds": [round(first, 3), round(second, 3)]}


def _answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(100).startswith(b"HTTP/1.")
    except OSError:
        return False


def describe(server, figures):
    ok = figures["failed"] == 0 and figures["old_code_after_reload"] == 0 and figures["answers_after_reload"]
    return (f"reload under load, {server}: {figures['requests']} requests, {figures['failed']} failed; after "
            f"the second HUP {figures['answers_after_reload']} answers, {figures['old_code_after_reload']} from "
            f"the old code; reloads took {figures['reload_seconds'][0]:.2f} and {figures['reload_seconds'][1]:.2f} s"
            f" -- {'new code, nothing dropped' if ok else 'NOT a clean reload'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="prefork-preload",
                        choices=["prefork-preload", "prefork", "prefork-master-preload", "gunicorn", "gunicorn-preload"])
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=1.5, help="load before, between and after the reloads")
    parser.add_argument("--gunicorn", help="path to gunicorn (default: .bench/venv/bin/gunicorn)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(args.server, args.connections, args.seconds, args.gunicorn)
    print(json.dumps(figures) if args.json else describe(args.server, figures))
    return 0 if figures["failed"] == 0 and figures["old_code_after_reload"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
