"""RequestStream (prefork/wsgi/request.py): httptools' callbacks to requests, and the limits on a head.

The request samples are httptools' own (its tests/test_parser.py: the chunked
request with trailers, the WebSocket upgrade, the fragmented PUT, the invalid
method and URL), run here through our stream: whole, in httptools' pieces, and
one byte at a time, which must all give the same requests.
"""

import pytest

from prefork.wsgi.request import Limits, RequestStream

# From httptools' tests/test_parser.py.
CHUNKED_REQUEST = (b"POST /test.php?a=b+c HTTP/1.1\r\nUser-Agent: Fooo\r\nHost: bar\r\nTransfer-Encoding: chunked\r\n"
                   b"\r\n5\r\nhello\r\n6\r\n world\r\n", b"0\r\nVary: *\r\nUser-Agent: spam\r\n\r\n")
UPGRADE_REQUEST = (b"GET /demo HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\n"
                   b"Sec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\nSec-WebSocket-Protocol: sample\r\nUpgrade: WebSocket\r\n"
                   b"Sec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\nOrigin: http://example.com\r\n\r\nHot diggity dogg",)
FRAGMENTED_REQUEST = (b"PUT / HTTP/1.1\r\nHost: localhost:1234\r\nContent-Type: text/pl",
                      b"ain; charset=utf-8\r\nX-Empty-Header: \r\nConnection: close\r\n",
                      b"Content-Length: 10\r\n\r\n1234567890")


def parsed(pieces, limits=Limits()):
    stream = RequestStream(limits)
    for piece in pieces:
        stream.feed(piece)
    return stream


def summary(stream):
    return [(r.method, r.target, r.version, r.headers, b"".join(r.chunks), r.complete, r.keep_alive, r.upgrade)
            for r in stream.ready], stream.error and stream.error.status, stream.upgraded


def ways(pieces):
    """The same bytes whole, in the given pieces, and one byte at a time."""
    data = b"".join(pieces)
    return [[data], list(pieces), [data[i:i + 1] for i in range(len(data))]]


@pytest.mark.parametrize("pieces, expected", [
    (CHUNKED_REQUEST, ([("POST", b"/test.php?a=b+c", "1.1", [(b"User-Agent", b"Fooo"), (b"Host", b"bar"),
                                                             (b"Transfer-Encoding", b"chunked")],
                         b"hello world", True, True, False)], None, False)),
    (FRAGMENTED_REQUEST, ([("PUT", b"/", "1.1", [(b"Host", b"localhost:1234"),
                                                 (b"Content-Type", b"text/plain; charset=utf-8"),
                                                 (b"X-Empty-Header", b""), (b"Connection", b"close"),
                                                 (b"Content-Length", b"10")],
                            b"1234567890", True, False, False)], None, False)),
    (UPGRADE_REQUEST, ([("GET", b"/demo", "1.1", None, b"", True, True, True)], None, True)),
    ((b"SPAM /test.php?a=b+c HTTP/1.1\r\n\r\n",), ([], 400, False)),
    ((b"POST HTTP/1.1\r\n\r\n",), ([], 400, False)),
])
def test_httptools_request_samples_parse_the_same_however_they_arrive(pieces, expected):
    for way in ways(pieces):
        requests, error, upgraded = summary(parsed(way))
        if expected[0] and expected[0][0][3] is None:          # the upgrade: its headers are not the point
            requests = [r[:3] + (None,) + r[4:] for r in requests]
        assert (requests, error, upgraded) == expected, way


def test_trailer_fields_do_not_become_header_fields():
    """A chunked body's trailers arrive after the head: taken as header fields, they would let a client
    add fields a proxy in front never saw (httptools reports them through the same callback)."""
    (request,) = parsed(CHUNKED_REQUEST).ready
    assert [name for name, _ in request.headers] == [b"User-Agent", b"Host", b"Transfer-Encoding"]


def test_pipelined_requests_are_kept_in_order_with_their_bodies():
    stream = parsed([b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\nGET /d HT"])
    assert [(r.target, b"".join(r.chunks), r.complete) for r in stream.ready] == \
           [(b"/a", b"abc", True), (b"/b", b"", True), (b"/c", b"z", True)]
    assert not stream.idle()                                     # /d has begun: it cannot move as it is


@pytest.mark.parametrize("head, limits, status", [
    (b"GET /" + b"x" * 100 + b" HTTP/1.1\r\n\r\n", Limits(request_line=100), 414),
    (b"GET /" + b"x" * 98 + b" HTTP/1.1\r\nHost: h\r\n\r\n", Limits(request_line=100), None),     # the target: 99 bytes
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"A: b\r\n" * 4 + b"\r\n", Limits(fields=4), 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\n" + b"A: b\r\n" * 3 + b"\r\n", Limits(fields=4), None),
    (b"GET / HTTP/1.1\r\nA: " + b"b" * 20 + b"\r\n\r\n", Limits(field_size=20), 431),
    (b"GET / HTTP/1.1\r\nHost: h\r\nA: " + b"b" * 19 + b"\r\n\r\n", Limits(field_size=20), None),
    (b"GET / HTTP/1.1\r\n\r\n", Limits(), 400),                                          # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Limits(), 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", Limits(), 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
     Limits(), 400),                                                                         # a body llhttp drops
    ((b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", b"1;e=" + b"x" * 10_000),
     Limits(100, 2, 100), 400),                                                                                   # a chunk extension without end
    (b"GET / HTTP/1.1\r\nA: " + b"b" * 10_000, Limits(100, 2, 100), 431),              # a head that never ends
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n", Limits(), 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", Limits(), 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", Limits(), 400),
])
def test_the_limits_hold_at_their_bounds_and_smuggling_is_refused(head, limits, status):
    stream = parsed(head if isinstance(head, tuple) else [head], limits)
    assert (stream.error and stream.error.status) == status
    if status and not isinstance(head, tuple):
        assert not stream.ready


def test_a_malformed_chunk_breaks_the_body_being_read():
    stream = parsed([b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\nzz\r\n"])
    (request,) = stream.ready
    assert (b"".join(request.chunks), request.complete, request.broken, stream.error.status) == (b"ab", True, True, 400)
