"""Observability through the CLI: --metrics (/metrics, /healthz, /readyz), `prefork ctl status`'s exit status,
--access-log, the request hooks, and a master whose output nobody reads."""

import fcntl
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from conftest import REPO, run_cli, wait_for
from http_client import Client

pytestmark = pytest.mark.timeout(90)

TESTS = os.path.join(REPO, "tests")
METRICS_LINE = re.compile(r"metrics on (\S+):(\d+):")


def metrics_address(server):
    server.wait_log(r"metrics on ")
    host, port = METRICS_LINE.search(server.log()).groups()
    return host, int(port)


def get(address, path, method="GET", headers=None):
    """(status, headers, body) of one request to the master's metrics address."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        reply = connection.getresponse()
        return reply.status, reply.headers, reply.read()
    finally:
        connection.close()


def scrape(address, openmetrics=False):
    """{(sample name, labels as a sorted tuple): value}, parsed by prometheus-client's parser for the format."""
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
    status, headers, body = get(address, "/metrics", headers=accept)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text" if openmetrics else "text/plain")
    families = (parse_openmetrics if openmetrics else parse_text)(body.decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


def hello(address, path="/", close=True):
    client = Client(address)
    try:
        client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n{'Connection: close' if close else ''}\r\n\r\n".encode())
        status, _, body = client.response()
        assert (status, body) == (200, b"Hello, World!")
    finally:
        client.sock.close()


def test_counters_never_go_down_across_a_kill_recycles_and_a_reload_and_exits_are_counted_by_reason(serve_cli):
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", "--max-requests", "7", "--metrics", "127.0.0.1:0")
    (address,) = server.addresses()
    metrics = metrics_address(server)
    first = server.wait_workers(2)
    seen, served = [], 0

    def check(expected_requests):
        values = wait_for(lambda: (v := scrape(metrics)) and v[("prefork_requests_total", ())] == expected_requests
                          and v, message=lambda: f"{expected_requests} requests counted: {scrape(metrics)}")
        seen.append(values)
        slots = sum(value for (name, _), value in values.items() if name == "prefork_slot_requests_total")
        assert slots == expected_requests
        return values

    for _ in range(5):
        hello(address)
    served += 5
    check(served)
    victim = sorted(first)[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_replaced([victim], 2)
    for _ in range(20):                 # past --max-requests 7 in both workers: recycles
        hello(address)
    served += 20
    check(served)
    before_reload = {w.pid for w in server.workers()}
    os.kill(server.pid, signal.SIGHUP)
    server.wait_replaced(before_reload, 2, timeout=20)
    values = wait_for(lambda: (v := scrape(metrics, openmetrics=True))[("prefork_reloads_total", (("outcome", "done"),))]
                      == 1 and v, message=lambda: f"the reload done: {scrape(metrics)}")
    for _ in range(3):
        hello(address)
    served += 3
    values = check(served)
    for earlier, later in zip(seen, seen[1:]):
        for key, value in earlier.items():
            if key[0].endswith("_total") or key[0].endswith(("_bucket", "_count", "_sum")):
                assert later.get(key, 0) >= value, f"{key} went down: {value} -> {later.get(key)}"
    exits = {dict(labels)["reason"]: value for (name, labels), value in values.items()
             if name == "prefork_worker_exits_total"}
    assert exits["signal"] == 1
    # The reload replaced both workers; one near its --max-requests is replaced as a recycle (the planner
    # gives the more pressing reason: states.DUE_ORDER), so at least one exit says "reload".
    assert 1 <= exits["reload"] <= 2
    assert 1 <= exits["recycle"] <= served // 7 + 1
    assert exits["crash"] == exits["boot"] == exits["timeout"] == exits["memory"] == 0
    assert values[("prefork_request_duration_seconds_count", ())] == served
    assert values[("prefork_generation", ())] == 1
    assert values[("prefork_workers", (("state", "idle"),))] == 2
    assert values[("prefork_ready", ())] == 1
    assert values[("prefork_listen_backlog", (("listener", f"127.0.0.1:{address[1]}"),))] == 2048
    assert values[("process_open_fds", ())] > 0 and values[("process_cpu_seconds_total", ())] > 0


def test_health_endpoints_and_ctl_status_say_ready_or_not_with_their_status(serve_cli, short_tmp):
    control = os.path.join(short_tmp, "ctl")
    good = serve_cli("hello", "-w", "1", "-b", "127.0.0.1:0", "--metrics", os.path.join(short_tmp, "metrics.sock"),
                     "--control", control)
    good.wait_workers(1)
    status, _, body = get_unix(os.path.join(short_tmp, "metrics.sock"), "/readyz")
    assert (status, body) == (200, b"ready: 1 worker(s) of generation 0 ready\n")
    assert get_unix(os.path.join(short_tmp, "metrics.sock"), "/healthz")[0] == 200
    returncode, stdout, _ = run_cli("ctl", "--control", control, "status")
    assert returncode == 0 and ", ready\n" in stdout

    bad_control = os.path.join(short_tmp, "ctl2")
    broken = serve_cli("apps.broken:Handler", "-w", "1", "-b", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                       "--control", bad_control, "--max-boot-failures", "1000", cwd=TESTS)
    address = metrics_address(broken)
    broken.wait_log("failed to boot")
    status, _, body = get(address, "/readyz")
    assert status == 503 and body.startswith(b"not ready: no worker of generation 0 is ready")
    assert get(address, "/healthz")[0] == 200
    returncode, stdout, _ = run_cli("ctl", "--control", bad_control, "status")
    assert returncode == 4 and "not ready (no worker of generation 0 is ready yet)" in stdout
    assert get(address, "/nothing")[0] == 404
    assert get(address, "/metrics", method="POST")[0] == 405
    head = get(address, "/metrics", method="HEAD")
    assert head[0] == 200 and head[2] == b"" and int(head[1]["Content-Length"]) > 100
    assert scrape(address)[("prefork_boot_failures_total", ())] >= 1
    returncode, _, stderr = run_cli("ctl", "--control", os.path.join(short_tmp, "nobody"), "status")
    assert returncode == 1 and "no master is listening" in stderr


def get_unix(path, target):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def test_a_stuck_scraper_never_delays_the_master(serve_cli):
    server = serve_cli("hello", "-w", "1", "-b", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
    metrics = metrics_address(server)
    server.wait_workers(1)
    stuck = []
    for _ in range(70):                 # past the cap on scrapers at once: the longest waiting are dropped
        sock = socket.create_connection(metrics)
        sock.sendall(b"GET /metrics HTTP/1.1\r\n")       # and never the end of the head
        stuck.append(sock)
    started = time.monotonic()
    os.kill(server.workers()[0].pid, signal.SIGKILL)      # the master must still reap and fork
    server.wait_log(r"worker 1 ready", count=2)
    assert time.monotonic() - started < 5
    assert get(metrics, "/healthz")[0] == 200, "a probe gets in while 64 stuck connections are held"
    for sock in stuck:
        sock.close()


@pytest.mark.parametrize("line_format", ["text", "json"])
def test_the_access_log_has_a_line_per_request_with_its_outcome_and_is_reopened_on_usr1(serve_cli, tmp_path,
                                                                                         line_format):
    log_path = tmp_path / "access.log"
    server = serve_cli("hello", "-w", "1", "-b", "127.0.0.1:0", "--access-log", str(log_path),
                       "--access-log-format", line_format)
    (address,) = server.addresses()
    (pid,) = server.wait_workers(1)
    hello(address, "/first")
    client = Client(address)                         # keep-alive, and a path to escape
    for path in ("/a", '/q"uote\\x'):
        client.send(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert client.response()[0] == 200
    client.sock.close()
    lines = wait_for(lambda: len(log_path.read_text().splitlines()) == 3 and log_path.read_text().splitlines(),
                     message=lambda: f"3 lines in {log_path.read_text()!r}")
    records = [json.loads(line) if line_format == "json" else logfmt(line) for line in lines]
    assert [r["path"] for r in records] == ["/first", "/a", '/q"uote\\x']
    for record in records:
        assert record["outcome"] == "ok" and record["method"] == "GET"
        assert int(record["status"]) == 200 and int(record["bytes"]) == 13
        assert int(record["worker"]) == 1 and int(record["pid"]) == pid
        assert record["listener"] == f"127.0.0.1:{address[1]}" and record["peer"].startswith("127.0.0.1:")
        assert 0 <= float(record["duration_ms"]) < 5000
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    os.rename(log_path, tmp_path / "access.log.1")
    os.kill(server.pid, signal.SIGUSR1)
    server.wait_log(r"reopened .*access\.log")

    def served_into_the_new_file():
        hello(address, "/after")
        return log_path.exists() and "/after" in log_path.read_text()
    wait_for(served_into_the_new_file, message="a line in the reopened access log")
    hello(address, "/later")                           # the worker has reopened it: nothing goes to the old file
    wait_for(lambda: "/later" in log_path.read_text())
    assert "/later" not in (tmp_path / "access.log.1").read_text()


def logfmt(line):
    """A logfmt line as a dict (values quoted as JSON strings where they had to be)."""
    fields = {}
    for match in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line):
        key, value = match.groups()
        fields[key] = json.loads(value) if value.startswith('"') else value
    return fields


def test_request_hooks_run_in_the_worker_and_one_that_raises_is_logged_once_and_fails_nothing(serve_cli, tmp_path):
    events = tmp_path / "events"
    access = tmp_path / "access.log"
    server = serve_cli("apps.handlers:Raising", "-w", "1", "-b", "127.0.0.1:0", "--hooks", "apps.request_hooks",
                       "--access-log", str(access), cwd=TESTS,
                       env={"PREFORK_TEST_EVENTS": str(events), "PREFORK_TEST_HOOK_RAISES": "1"})
    (address,) = server.addresses()
    (pid,) = server.wait_workers(1)
    for _ in range(3):
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"x\n")
            assert sock.recv(100) == b""            # Raising raises: the connection is closed
    recorded = wait_for(lambda: events.read_text().count("post_request") == 3 and events.read_text().splitlines(),
                        message=lambda: f"3 post_request lines: {events.read_text() if events.exists() else ''}")
    assert [line.split()[:3] for line in recorded] == [[kind, str(pid), "127.0.0.1"] for _ in range(3)
                                                       for kind in ("pre_request", "post_request")]
    assert all(line.split()[3] == "handler_error" and 0 <= float(line.split()[4]) < 5
               for line in recorded if line.startswith("post_request"))
    assert server.log().count("post_request raised (logged once per worker") == 1
    assert [logfmt(line)["outcome"] for line in access.read_text().splitlines()] == ["handler_error"] * 3
    assert {w.pid for w in server.workers()} == {pid}


@pytest.mark.xdist_group("load")        # a worker forked per request for seconds: not beside a timing-bound test
def test_a_master_whose_output_nobody_reads_keeps_serving_and_counts_what_it_dropped(tmp_path):
    """The issue's case: stdout and stderr a pipe nobody reads, --max-requests 1 under a stream of requests.
    Before, the master blocked in write(): every worker exited, none was forked, every client timed out."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)                # F_SETPIPE_SZ: full after a few lines
    ports = socket.socket()
    ports.bind(("127.0.0.1", 0))
    metrics_port = ports.getsockname()[1]
    ports.close()
    proc = subprocess.Popen([sys.executable, "-m", "prefork", "serve", "hello", "-b", "127.0.0.1:0", "-w", "2",
                             "--max-requests", "1", "--log-level", "debug", "--metrics", f"127.0.0.1:{metrics_port}"],
                            cwd=REPO, stdout=write_end, stderr=write_end, start_new_session=True)
    os.close(write_end)
    try:
        text = b""
        os.set_blocking(read_end, False)

        def startup_read():
            nonlocal text
            try:
                text += os.read(read_end, 65536)
            except BlockingIOError:
                pass
            return b"listening on " in text and re.search(rb"listening on 127\.0\.0\.1:(\d+)", text)
        port = int(wait_for(startup_read, message="the listening line").group(1))
        metrics = ("127.0.0.1", metrics_port)
        wait_for(lambda: scrape(metrics)[("prefork_workers", (("state", "idle"),))] == 2, message="2 workers")
        failures, served = [], 0
        master_dropped = ("prefork_log_lines_dropped_total", (("process", "master"),))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:         # nobody reads the pipe meanwhile
            try:
                hello(("127.0.0.1", port))
                served += 1
            except (OSError, AssertionError, http.client.HTTPException) as exc:
                failures.append(exc)
            if served % 20 == 0 and scrape(metrics)[master_dropped] >= 10:
                break
        values = scrape(metrics)
        assert not failures and served >= 20
        assert values[master_dropped] >= 10, "the output never filled up"
        recycles = ("prefork_worker_exits_total", (("reason", "recycle"),))
        wait_for(lambda: scrape(metrics)[recycles] >= served - 2,          # the last ones leave once replaced
                 message=lambda: f"{served} requests, {scrape(metrics)[recycles]} recycles")
        output = bytearray()
        summary = re.compile(rb"\[%d\] \[WARNING\] (\d+) log line\(s\) dropped" % proc.pid)

        def summarized():                          # read it all; the master then writes what waited
            try:
                while chunk := os.read(read_end, 65536):
                    output.extend(chunk)
            except BlockingIOError:
                pass
            return sum(map(int, summary.findall(output))) >= values[master_dropped]
        wait_for(summarized, timeout=20, message=lambda: f"summaries of {values[master_dropped]} dropped lines")
        # Exact: every line the master dropped is counted once, in the metric and in its summary lines.
        assert sum(map(int, summary.findall(output))) == scrape(metrics)[master_dropped]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        os.close(read_end)


def test_metrics_and_access_log_settings_that_cannot_work_are_one_line_errors(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        returncode, _, stderr = run_cli("serve", "hello", "-b", "127.0.0.1:0", "--metrics",
                                        f"127.0.0.1:{busy.getsockname()[1]}")
    finally:
        busy.close()
    assert returncode == 1 and "--metrics" in stderr and "in use" in stderr and "Traceback" not in stderr
    returncode, _, stderr = run_cli("serve", "hello", "-b", "127.0.0.1:0", "--metrics", "udp://127.0.0.1:0")
    assert returncode == 1 and "stream socket" in stderr and len(stderr.strip().splitlines()) == 1
    returncode, _, stderr = run_cli("serve", "hello", "--policy", "serial", "--metrics", "127.0.0.1:0")
    assert returncode == 2 and "--metrics needs a pool" in stderr
    returncode, _, stderr = run_cli("serve", "hello", "-b", "127.0.0.1:0", "--access-log",
                                    str(tmp_path / "no" / "such" / "dir.log"))
    assert returncode == 1 and "cannot open --access-log" in stderr and "Traceback" not in stderr
    returncode, _, stderr = run_cli("serve", "hello", "--access-log-format", "xml")
    assert returncode == 2 and "--access-log-format" in stderr


def test_scraping_while_serving_keeps_every_request(serve_cli):
    server = serve_cli("hello", "-w", "2", "-b", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
    (address,) = server.addresses()
    metrics = metrics_address(server)
    server.wait_workers(2)
    stop, scrapes = threading.Event(), []

    def scraper():
        while not stop.is_set():
            scrapes.append(scrape(metrics)[("prefork_requests_total", ())])
    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for _ in range(200):
            hello(address, close=True)
    finally:
        stop.set()
        thread.join(10)
    assert scrapes == sorted(scrapes) and len(scrapes) >= 5
    assert wait_for(lambda: scrape(metrics)[("prefork_requests_total", ())] == 200)


def test_readyz_says_503_as_soon_as_a_graceful_stop_begins_while_the_workers_finish(serve_cli):
    server = serve_cli("apps.handlers:Sleepy", "-w", "1", "-b", "127.0.0.1:0", "--metrics", "127.0.0.1:0", cwd=TESTS)
    (address,) = server.addresses()
    metrics = metrics_address(server)
    server.wait_workers(1)
    assert get(metrics, "/readyz")[0] == 200
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"2\n")                         # holds the worker for 2 s
        wait_for(lambda: scrape(metrics)[("prefork_threads", (("state", "busy"),))] == 1)
        os.kill(server.pid, signal.SIGTERM)
        server.wait_log("graceful stop")
        status, _, body = get(metrics, "/readyz")
        assert status == 503 and body == b"not ready: the master is stopping (graceful)\n"
        assert get(metrics, "/healthz")[0] == 200
        assert sock.recv(100).startswith(b"done")   # the request in hand is served
    assert server.proc.wait(15) == 0                 # the stop we began (a second SIGTERM could come too late)


def test_a_wsgi_apps_access_lines_have_method_path_status_and_body_bytes(serve_cli, tmp_path):
    log_path = tmp_path / "access.log"
    server = serve_cli("--wsgi", "apps.wsgi_apps:app", "-w", "1", "-b", "127.0.0.1:0", "--access-log", str(log_path),
                       "--access-log-format", "json", cwd=TESTS)
    (address,) = server.addresses()
    server.wait_workers(1)
    client = Client(address)
    client.send(b"GET /echo?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
    assert client.response()[2] == b"hello"
    client.send(b"GET /status?404+Not+Found HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.response()[0] == 404
    client.send(b"GET /raise-before HTTP/1.1\r\nHost: t\r\n\r\n")
    assert client.response()[0] == 500
    client.sock.close()
    records = wait_for(lambda: len(log_path.read_text().splitlines()) == 3 and
                       [json.loads(line) for line in log_path.read_text().splitlines()])
    assert [(r["method"], r["path"], r["status"], r["bytes"], r["outcome"]) for r in records] == [
        ("GET", "/echo?x=1", 200, 5, "ok"), ("GET", "/status?404+Not+Found", 404, 0, "ok"),
        ("GET", "/raise-before", 500, None, "ok")]
