"""A handler module with the import-time weight of a real service, for measuring --preload.

It imports a spread of standard-library modules (HTTP, e-mail, JSON, XML,
SQLite, decimal, asyncio, logging) and builds a 200,000-entry lookup table, as
a service loading its configuration or a reference data set would. Without
--preload every worker builds its own copy; with --preload the master builds
it once and the workers share its pages copy-on-write.
"""

import asyncio  # noqa: F401
import decimal  # noqa: F401
import email.mime.multipart  # noqa: F401
import http.client  # noqa: F401
import json  # noqa: F401
import logging.handlers  # noqa: F401
import sqlite3  # noqa: F401
import urllib.request  # noqa: F401
import xml.etree.ElementTree  # noqa: F401

import prefork

TABLE = {f"key-{n}": (n, str(n) * 3, float(n)) for n in range(200_000)}


class LookupHandler(prefork.BaseRequestHandler):
    """Answer the table entry a line names: "key-42\\n" -> "(42, '424242', 42.0)\\n"."""

    def handle(self):
        line = self.request.recv(1024).strip().decode()
        self.request.sendall(repr(TABLE.get(line)).encode() + b"\n")
