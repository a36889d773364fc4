"""WSGI apps the WSGI tests serve with `prefork serve --wsgi apps.wsgi_apps:...`: one route per behaviour."""

import json
import os
import wsgiref.validate

RECORD = os.environ.get("WSGI_TEST_RECORD", "")      # a file where close() calls are written, one per line


def _record(line):
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(line + "\n")


class Closing:
    """A body that records its close() (PEP 3333: the server calls it however the response ends)."""

    def __init__(self, name, pieces, fail_after=None):
        self.name, self.pieces, self.fail_after = name, pieces, fail_after

    def __iter__(self):
        for index, piece in enumerate(self.pieces):
            if index == self.fail_after:
                raise RuntimeError(f"{self.name} broke after {index} pieces")
            yield piece

    def close(self):
        _record(f"closed {self.name}")


SHOWN = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR",
         "REMOTE_PORT", "SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH", "RAW_URI", "wsgi.url_scheme",
         "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.version")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    route = ROUTES.get(path.rstrip("/").rsplit("/", 1)[-1] or "pid", environ_route)
    return route(environ, start_response)


def text(start_response, body, status="200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
    return [body]


def pid_route(environ, start_response):
    return text(start_response, str(os.getpid()).encode())


def environ_route(environ, start_response):
    shown = {key: environ[key] for key in SHOWN if key in environ}
    shown.update((key, value) for key, value in environ.items() if key.startswith("HTTP_"))
    return text(start_response, json.dumps(shown).encode())


def echo_route(environ, start_response):
    return text(start_response, environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or -1)))


def lines_route(environ, start_response):
    lines = list(environ["wsgi.input"])
    return text(start_response, json.dumps([line.decode() for line in lines]).encode())


def ignore_body_route(environ, start_response):
    return text(start_response, b"ignored")


def chunked_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("chunked", [b"one,", b"", b"two,", b"three"])


def write_route(environ, start_response):
    write = start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "11")])
    write(b"written ")
    return [b"and", b""]


def file_route(environ, start_response):
    name = environ["QUERY_STRING"]
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](open(name, "rb"), 8192)


def raise_before_route(environ, start_response):
    raise RuntimeError("the app broke before start_response")


def raise_after_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Closing("broken", [b"first piece,", b"second piece"], fail_after=1)


def exc_info_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("changed my mind")
    except ValueError as exc:
        import sys
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [f"error: {exc}".encode()]


def close_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
    return [b"bye"]


def errors_route(environ, start_response):
    environ["wsgi.errors"].write("a line for the log\nand half ")
    environ["wsgi.errors"].write("of another\n")
    return text(start_response, b"logged")


def status_route(environ, start_response):
    status = environ["QUERY_STRING"].replace("+", " ")
    start_response(status, [])
    return []


def redirect_route(environ, start_response):
    from urllib.parse import unquote
    start_response("302 Found", [("Location", unquote(environ["QUERY_STRING"])), ("Content-Length", "0")])
    return []


def bad_length_route(environ, start_response):
    start_response("200 OK", [("Content-Length", "-3")])
    return [b"hello world"]


ROUTES = {"pid": pid_route, "environ": environ_route, "echo": echo_route, "lines": lines_route,
          "ignore-body": ignore_body_route, "chunked": chunked_route, "write": write_route, "file": file_route,
          "raise-before": raise_before_route, "raise-after": raise_after_route, "exc-info": exc_info_route,
          "close": close_route, "errors": errors_route, "status": status_route,
          "redirect": redirect_route, "bad-length": bad_length_route}

validated = wsgiref.validate.validator(app)


def create_app(greeting="hello from a factory"):
    def factory_app(environ, start_response):
        return text(start_response, greeting.encode())
    return factory_app


not_callable = 42
