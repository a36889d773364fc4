#!/usr/bin/env python3
"""h11 against httptools: what parsing one HTTP request costs, to choose the parser of prefork's WSGI server.

    python scripts/http_parsers.py              # about 20 s
    python scripts/http_parsers.py --quick      # a second or two: proves it runs

Two requests, each parsed by a fresh parser as a server does for a new
connection: wrk's hello (GET / with Host, User-Agent and Accept), parsed into
method, target and a list of headers; and a POST with a 1 KB chunked body (4
chunks of 256 bytes), whose body is read to its end. Printed: requests parsed
per second by each parser, microseconds per request, and httptools/h11.

A fresh parser per request includes making it: an h11.Connection is dearer
to make than an httptools parser, and a keep-alive connection makes one per
connection, not per request, so the cost of making each alone is printed too
(subtract it for the cost of a further request on a connection). h11 cannot
parse a second request on a connection until a response is sent, so
reusing one parser is not measured here.

h11 and httptools are pip-installed into this interpreter when missing
(--no-install: print the pip command instead).
"""

import argparse
import importlib
import subprocess
import sys
import timeit

HELLO = b"GET / HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
BODY = bytes(range(256)) * 4                   # 1 KB
POST = (b"POST /upload HTTP/1.1\r\nHost: localhost:8000\r\nUser-Agent: wrk\r\nContent-Type: "
        b"application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"100\r\n" + BODY[i:i + 256] + b"\r\n" for i in range(0, len(BODY), 256)) + b"0\r\n\r\n")


def need(module, install):
    """Import module, pip-installing it first if missing and allowed; exit saying how otherwise."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if not install:
            sys.exit(f"{module} is missing: {sys.executable} -m pip install {module}")
    print(f"installing {module} with pip ...", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", module], check=True)
    return importlib.import_module(module)


def h11_parser(h11):
    def parse(data):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        request = conn.next_event()
        body = []
        while type(event := conn.next_event()) is h11.Data:
            body.append(event.data)
        assert type(event) is h11.EndOfMessage, event
        return request.method, request.target, list(request.headers), b"".join(body)
    return parse, lambda: h11.Connection(h11.SERVER)


def httptools_parser(httptools):
    class Request:
        """The callbacks httptools calls while it parses."""

        def __init__(self):
            self.headers, self.body, self.complete = [], [], False

        def on_url(self, url):
            self.target = url

        def on_header(self, name, value):
            self.headers.append((name, value))

        def on_body(self, chunk):
            self.body.append(chunk)

        def on_message_complete(self):
            self.complete = True

    def parse(data):
        request = Request()
        parser = httptools.HttpRequestParser(request)
        parser.feed_data(data)
        assert request.complete
        return parser.get_method(), request.target, request.headers, b"".join(request.body)
    return parse, lambda: httptools.HttpRequestParser(Request())


def per_second(function, *args, repeat):
    """Calls of function(*args) per second: the best of repeat runs of about 0.2 s each (timeit's way)."""
    timer = timeit.Timer(lambda: function(*args))
    number, _ = timer.autorange()
    return number / min(timer.repeat(repeat, number))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run each: proves the script works")
    parser.add_argument("--no-install", action="store_true", help="print how to install a missing parser")
    args = parser.parse_args()
    repeat = 1 if args.quick else 7
    parsers = {"h11": h11_parser(need("h11", not args.no_install)),
               "httptools": httptools_parser(need("httptools", not args.no_install))}

    for name, (parse, _) in parsers.items():       # both must read the same requests the same way
        method, target, headers, body = parse(HELLO)
        assert (method, target, len(headers), body) == (b"GET", b"/", 3, b""), (name, method, target, headers)
        assert parse(POST)[3] == BODY, name

    versions = {name: importlib.import_module(name).__version__ for name in parsers}
    print(f"Python {sys.version.split()[0]}; " + ", ".join(f"{name} {v}" for name, v in versions.items()))
    print(f"{'request':<34}{'parser':<11}{'requests/s':>12}{'us each':>10}")
    rates = {}
    for label, data in ((f"GET hello ({len(HELLO)} B)", HELLO), (f"POST, 1 KB chunked ({len(POST)} B)", POST)):
        for name, (parse, _) in parsers.items():
            rates[label, name] = per_second(parse, data, repeat=repeat)
            print(f"{label:<34}{name:<11}{rates[label, name]:>12,.0f}{1e6 / rates[label, name]:>10.2f}")
        print(f"{label:<34}{'httptools/h11':<14}{rates[label, 'httptools'] / rates[label, 'h11']:>9.2f}x")
    for name, (_, make) in parsers.items():
        print(f"making one {name} parser: {1e6 / per_second(make, repeat=repeat):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
