"""The metrics format (prefork.exposition) and the non-blocking output (prefork.output), read back by real parsers
and a real pipe."""

import fcntl
import os
import re

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from prefork import output
from prefork.exposition import Family, render, wants_openmetrics

pytestmark = pytest.mark.timeout(30)

FAMILIES = [
    Family("demo_requests", "counter", "requests\nserved \\ in all", [((), 7), ((("slot", 'a"b\\c\nd'),), 3)]),
    Family("demo_workers", "gauge", "workers", [((("state", "idle"),), 2), ((), 0.25)]),
    Family("demo_seconds", "histogram", "durations", [((), ([1, 2, 0, 3], 4.5))], (0.1, 1.0, 10.0)),
]


@pytest.mark.parametrize("openmetrics", [False, True])
def test_what_render_writes_reads_back_with_prometheus_clients_parsers(openmetrics):
    text = render(FAMILIES, openmetrics).decode()
    families = {f.name: f for f in (parse_openmetrics if openmetrics else parse_text)(text)}
    counter = families["demo_requests"]
    assert counter.type == "counter" and counter.documentation == "requests\nserved \\ in all"
    assert {(s.name, tuple(s.labels.items()), s.value) for s in counter.samples} == {
        ("demo_requests_total", (), 7), ("demo_requests_total", (("slot", 'a"b\\c\nd'),), 3)}
    assert [s.value for s in families["demo_workers"].samples] == [2, 0.25]
    histogram = {(s.name, s.labels.get("le")): s.value for s in families["demo_seconds"].samples}
    assert [histogram["demo_seconds_bucket", le] for le in ("0.1", "1.0", "10.0", "+Inf")] == [1, 3, 3, 6]
    assert histogram["demo_seconds_count", None] == 6 and histogram["demo_seconds_sum", None] == 4.5
    assert text.endswith("# EOF\n") == openmetrics


def test_openmetrics_is_chosen_by_the_accept_header_prometheus_sends():
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert not wants_openmetrics("text/plain") and not wants_openmetrics(None)


def test_a_pipe_nobody_reads_never_blocks_and_every_line_is_written_or_counted():
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)              # F_SETPIPE_SZ: a small pipe fills at once
    out = output.LineOutput(write_end, limit=8192)
    before = output.dropped_total()
    lines = [f"line {n:05d} {'x' * 50}\n".encode() for n in range(2000)]
    for line in lines:                               # would block on the first full pipe if it could
        out.write(line)
    assert os.get_blocking(write_end), "the pipe's own open file description must keep its flags"
    dropped = out.dropped
    assert 2000 - 8192 // 61 - 4096 // 61 - 2 <= dropped < 2000
    assert output.dropped_total() - before == dropped
    assert out.take_dropped() == 0                   # not while lines still wait
    received = bytearray()
    os.set_blocking(read_end, False)
    while True:                                      # read the pipe, as the output writes what waited
        drained = out.flush()
        try:
            received += os.read(read_end, 65536)
        except BlockingIOError:
            if drained:
                break
    got = received.decode().splitlines(keepends=True)
    assert all(re.fullmatch(r"line \d{5} x{50}\n", line) for line in got), "a line was cut or mixed"
    numbers = [int(line.split()[1]) for line in got]
    assert numbers == sorted(numbers) and len(numbers) + dropped == 2000
    assert out.take_dropped() == dropped and out.take_dropped() == 0
    out.close()
    os.close(read_end)
    os.close(write_end)


def test_an_output_that_fails_drops_and_counts_its_lines_and_never_raises():
    """A full disk (ENOSPC), a hung-up terminal (EIO): the master logs on, and counts what was lost."""
    fd = os.open("/dev/full", os.O_WRONLY)
    out = output.LineOutput(fd)
    before = output.dropped_total()
    out.write(b"one\ntwo\n")
    out.write(b"three\n")
    assert out.dropped == 3 and output.dropped_total() - before == 3 and out.take_dropped() == 3
    out.close()
    os.close(fd)
