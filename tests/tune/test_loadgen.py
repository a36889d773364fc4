"""The load generator: its arithmetic, and real runs against `prefork serve` subprocesses
(servers in a thread of this process would make its fork() unsafe)."""

import array
import contextlib
import os
import socket
import tempfile
import time

import psutil
import pytest

from conftest import REPO
from prefork.tune import client_process, loadgen

TESTS = os.path.join(REPO, "tests")
SHORT = 0.3            # seconds per measured run: long enough for hundreds of requests


def children():
    return {p.pid for p in psutil.Process().children(recursive=True)}


# -- arithmetic ------------------------------------------------------------------------------

@pytest.mark.parametrize("values, percent, expected", [
    (list(range(1, 101)), 50, 50),
    (list(range(1, 101)), 99, 99),
    (list(range(1, 101)), 100, 100),
    (list(range(1, 101)), 0, 1),
    ([7.0], 99, 7.0),
    ([1, 2, 3, 4], 50, 2),          # nearest rank: ceil(0.5 * 4) = 2nd value
    ([1, 2, 3, 4], 51, 3),
    ([1] * 98 + [50, 60], 99, 50),  # ceil(0.99 * 100) = 99th value
    ([], 50, None),
])
def test_percentile_is_the_nearest_rank(values, percent, expected):
    assert loadgen.percentile(values, percent) == expected


def test_result_reports_throughput_and_percentiles_in_ms():
    latencies = array.array("d", [i / 1000 for i in range(1, 201)])      # 1..200 ms
    result = loadgen.LoadResult(completed=200, errors=0, seconds=2.0, latencies=latencies)
    assert result.throughput == 100.0
    assert result.p50_ms == pytest.approx(100.0)
    assert result.p99_ms == pytest.approx(198.0)
    empty = loadgen.LoadResult(completed=0, errors=3, seconds=1.0, latencies=array.array("d"))
    assert (empty.throughput, empty.p50_ms, empty.p99_ms) == (0.0, None, None)


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n"


@pytest.mark.parametrize("reply, expected", [
    (HEAD + b"Hello", len(HEAD) + 13),
    (HEAD.replace(b"Content-Length: 13", b"content-length:2"), len(HEAD) - 2 + 2),
    (HEAD[:25], None),
    (b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n", -1),
    (b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\nContent-Length: 5\r\n", -1),     # not a header: in the body
])
def test_http_length_reads_content_length_from_the_header_only(reply, expected):
    assert client_process.http_length(reply) == expected


@pytest.mark.parametrize("data, greeting, expected", [
    (b"220 ready\r\n", "line", 11), (b"220 ready\r\nhello\n", "line", 11), (b"220 rea", "line", None),
    (b"", "line", None), (b"\n", "line", 1),
    (b"220 ready\r\n", 11, 11), (b"220 ready\r\n", 12, None), (b"220 ready\r\n", 5, 5),
])
def test_greeting_length_is_through_the_first_newline_or_a_fixed_size(data, greeting, expected):
    assert client_process.greeting_length(data, greeting) == expected


def test_default_request_is_http_get_with_host():
    assert loadgen.http_get(("127.0.0.1", 8000), keepalive=True) == b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
    assert loadgen.http_get(("::1", 80), keepalive=False) == (
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n")
    assert b"Host: localhost\r\n" in loadgen.http_get("/tmp/s.sock", keepalive=True)


# -- real runs ---------------------------------------------------------------------------------

@pytest.fixture
def serve(serve_cli):
    """`prefork serve SPEC -b 127.0.0.1:0 ...` from tests/; returns its address once every worker is ready."""
    def start(spec, *flags, workers=1):
        server = serve_cli(spec, "-b", "127.0.0.1:0", "-w", str(workers), *flags, cwd=TESTS)
        address = server.addresses()[0]
        server.wait_workers(workers)
        return address
    return start


def run(address, request, concurrency=4, **options):
    servers = children()
    result = loadgen.run_load(address, request, concurrency, SHORT, **options)
    assert children() == servers, "a client process was left behind"
    return result


@pytest.mark.parametrize("keepalive", [False, True], ids=["new-connection", "keep-alive"])
def test_http_hello_is_answered_without_errors(serve, keepalive):
    address = serve("hello", "--threads", "4", workers=2)
    result = run(address, loadgen.http_get(address, keepalive), keepalive=keepalive, half_close=False)
    assert result.errors == 0, result.error_kinds
    assert result.completed > 50
    assert len(result.latencies) == result.completed
    assert list(result.latencies) == sorted(result.latencies)
    assert 0 < result.p50_ms <= result.p99_ms < SHORT * 1000


def test_echo_without_keepalive_half_closes_and_reads_to_eof(serve):
    # The echo handler answers until its client is done: only the half-close ends the reply.
    address = serve("echo", "--threads", "4")
    result = run(address, b"hello\n", keepalive=False, processes=1)
    assert result.errors == 0, result.error_kinds
    assert result.completed > 50


def test_echo_with_keepalive_and_a_fixed_reply_size_over_a_unix_socket(serve_cli):
    path = os.path.join(tempfile.mkdtemp(prefix="pf-"), "echo.sock")
    server = serve_cli("echo", "-b", f"unix:{path}", "-w", "1", "--threads", "4")
    server.wait_workers(1)
    result = run(path, b"0123456789\n", keepalive=True, reply_bytes=11)
    assert result.errors == 0, result.error_kinds
    assert result.completed > 50


def test_keepalive_reassembles_replies_that_arrive_in_pieces(serve):
    address = serve("apps.loadgen_peers:SplitReply", "--threads", "4")
    result = run(address, loadgen.http_get(address, True), concurrency=2, keepalive=True)
    assert result.errors == 0, result.error_kinds
    assert result.completed > 10
    assert result.p50_ms >= 2.0            # two 1 ms pauses inside every reply


GREETING = "apps.loadgen_peers:Greeting"     # b"220 ready\r\n", then echo; served without deferred accept


@pytest.mark.parametrize("keepalive, greeting", [(True, "line"), (False, 11)], ids=["keep-alive", "new-connection"])
def test_a_greeting_is_read_before_the_first_request(serve, keepalive, greeting):
    address = serve(GREETING, "--threads", "4", "--no-defer-accept")
    result = run(address, b"hello\n", keepalive=keepalive, reply_bytes=6 if keepalive else None, greeting=greeting)
    assert result.errors == 0, result.error_kinds
    assert result.completed > 50


def test_a_greeting_longer_than_expected_or_missing_is_an_error(serve):
    address = serve(GREETING, "--threads", "4", "--no-defer-accept")
    result = run(address, b"hello\n", keepalive=True, reply_bytes=6, greeting=5)
    assert result.completed == 0
    assert result.error_kinds.keys() == {"more greeting bytes than expected"}
    address = serve("apps.loadgen_peers:CloseAtOnce", "--threads", "2", "--no-defer-accept")
    result = run(address, b"hello\n", greeting="line")
    assert result.completed == 0
    assert set(result.error_kinds) <= {"closed before the greeting was complete", "reset"}
    assert result.error_kinds.get("closed before the greeting was complete", 0) > 10


def test_http_error_status_counts_as_an_error(serve):
    address = serve("apps.loadgen_peers:ServerError", "--threads", "2")
    result = run(address, loadgen.http_get(address, False), half_close=False)
    assert result.completed == 0
    assert result.error_kinds.keys() == {"HTTP error status"}
    assert result.errors > 10


def test_a_connection_closed_without_a_reply_is_an_error(serve):
    # The peer reads the request before it closes: a close with the request unread would be a reset
    # or a clean end by a race (10 closed and 108 reset in one run, 104 reset in the next).
    address = serve("apps.loadgen_peers:ReadThenClose", "--threads", "2")
    result = run(address, b"anything\n")
    assert result.completed == 0
    assert result.error_kinds.keys() == {"closed without a reply"}
    assert result.errors > 10


def test_unanswered_requests_are_errors_after_the_timeout_or_the_whole_window(serve):
    address = serve("apps.loadgen_peers:Silent", "--threads", "8")
    result = run(address, b"ping\n", concurrency=2, keepalive=True, reply_bytes=5, timeout=0.1)
    assert result.completed == 0
    assert result.error_kinds.get("timeout", 0) >= 2             # two connections, several 0.1 s timeouts
    result = run(address, b"ping\n", concurrency=2, keepalive=True, reply_bytes=5, timeout=5)
    assert result.error_kinds == {"unanswered for the whole window": 2}


def test_a_refused_address_is_counted_without_a_tight_loop():
    with socket.socket() as sock:          # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()
    result = run(address, b"x\n", concurrency=4, processes=2)
    assert result.completed == 0
    assert result.error_kinds.keys() == {"refused"}
    # each slot waits a 10 ms tick before it reconnects: at most about 4 x 30 refusals in 0.3 s
    assert 4 <= result.errors <= 4 * (SHORT / 0.01 + 5)


def test_during_spans_the_measured_window_only(serve):
    address = serve("hello")
    spans = []

    @contextlib.contextmanager
    def during():
        entered = time.monotonic()
        yield
        spans.append((entered, time.monotonic()))

    started = time.monotonic()
    run(address, loadgen.http_get(address, False), concurrency=1, warmup=0.2, during=during, half_close=False)
    (entered, left), = spans
    assert entered - started >= 0.2
    assert left - entered == pytest.approx(SHORT, abs=0.05)


def test_clients_are_reaped_when_the_caller_is_interrupted(serve):
    address = serve("hello")

    @contextlib.contextmanager
    def interrupted():
        raise KeyboardInterrupt
        yield

    servers, begun = children(), time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        loadgen.run_load(address, loadgen.http_get(address, False), 4, 30, processes=2, during=interrupted)
    assert time.monotonic() - begun < 5
    assert children() == servers
