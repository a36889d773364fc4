"""The access log's lines (prefork.access): outcomes, escaping that no request can forge a line through."""

import json
import time

import pytest

from prefork import access

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("exc, outcome", [
    (TimeoutError("timed out"), "client_timeout"),
    (ConnectionResetError(), "client_went_away"),
    (BrokenPipeError(), "client_went_away"),
    (ConnectionAbortedError(), "client_went_away"),
    (ValueError("bug"), "handler_error"),
    (OSError("disk"), "handler_error"),
])
def test_an_exception_says_how_the_request_ended(exc, outcome):
    assert access.outcome_of(exc) == outcome


HOSTILE = 'GET /x" status=200 forged=1\n[fake line] \x1b[31m\x00 é'


def test_a_text_line_is_one_line_whatever_the_request_holds():
    fixed = access.TEXT.fixed("unix:/run/my app.sock", 3, 42)
    line = access.TEXT.line("T", "127.0.0.1:5", fixed, "ok", 0.00025, ("GET", HOSTILE, 404, None)).decode()
    assert line.count("\n") == 1 and line.endswith("\n")
    assert "\x1b" not in line and "\x00" not in line
    assert line == ('time=T peer=127.0.0.1:5 listener="unix:/run/my app.sock" worker=3 pid=42 outcome=ok '
                    'duration_ms=0.250 method=GET path="GET /x\\" status=200 forged=1\\n[fake line] \\u001b[31m\\u0000 '
                    '\\u00e9" status=404 bytes=-\n')
    plain = access.TEXT.line("T", "unix", fixed, "ok", 0.001, None)
    assert plain.endswith(b"pid=42 outcome=ok duration_ms=1.000\n")


def test_a_json_line_is_one_object_that_reads_back_exactly():
    fixed = access.JSON.fixed('unix:/run/"odd".sock', 3, 42)
    line = access.JSON.line("T", "[::1]:5", fixed, "client_timeout", 0.0012345, (None, HOSTILE, 200, 7))
    assert line.count(b"\n") == 1 and line.isascii()
    assert json.loads(line) == {"time": "T", "peer": "[::1]:5", "listener": 'unix:/run/"odd".sock', "worker": 3,
                                "pid": 42, "outcome": "client_timeout", "duration_ms": 1.234, "method": None,
                                "path": HOSTILE, "status": 200, "bytes": 7}
    assert json.loads(access.JSON.line("T", "unix", fixed, "ok", 0.0, None))["outcome"] == "ok"


@pytest.mark.parametrize("address, text", [
    (("127.0.0.1", 5000), "127.0.0.1:5000"),
    (("::1", 5000, 0, 0), "[::1]:5000"),
    ("", "unix"),
    (b"/run/client.sock", "/run/client.sock"),
    ("/run/client.sock", "/run/client.sock"),
])
def test_peers_are_written_as_addresses_are_bound(address, text):
    assert access.peer_text(address) == text


def test_the_clock_writes_utc_with_milliseconds():
    clock = access.Clock()
    now = 1764879455.8194
    assert clock.text(now) == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".819Z"
    assert clock.text(now + 0.1).endswith(".919Z")
