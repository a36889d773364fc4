"""A handler module with the import-time weight of a real service, for measuring --preload.

It imports a spread of standard-library modules (HTTP, e-mail, JSON, XML,
SQLite, decimal, asyncio, logging) and builds a 200,000-entry lookup table, as
a service loading its configuration or a reference data set would. Without
--preload every worker builds its own copy; with --preload a zygote builds it
once and the workers share its pages copy-on-write. It serves the table as a
socketserver handler (prefork) and as a WSGI app (gunicorn), and needs only
the standard library.
"""

import asyncio  # noqa: F401
import decimal  # noqa: F401
import email.mime.multipart  # noqa: F401
import http.client  # noqa: F401
import json  # noqa: F401
import logging.handlers  # noqa: F401
import socketserver
import sqlite3  # noqa: F401
import urllib.request  # noqa: F401
import xml.etree.ElementTree  # noqa: F401

TABLE = {f"key-{n}": (n, str(n) * 3, float(n)) for n in range(200_000)}


class LookupHandler(socketserver.BaseRequestHandler):
    """Answer the table entry a line names: "key-42\\n" -> "(42, '424242', 42.0)\\n"."""

    def handle(self):
        line = self.request.recv(1024).strip().decode()
        self.request.sendall(repr(TABLE.get(line)).encode() + b"\n")


def app(environ, start_response):
    """The same lookup over HTTP: GET /key-42."""
    body = repr(TABLE.get(environ.get("PATH_INFO", "/")[1:])).encode() + b"\n"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
