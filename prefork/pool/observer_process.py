"""Runs in each worker: what happens around every request besides serving it: the request hooks and
the access log line.

One RequestObserver per accept thread, made only when there is something to
do (an access log, or a pre_request or post_request hook): without one, the
loops pay nothing per request. A hook that raises is logged once per worker,
with its traceback, and never fails the request.
"""

import logging
import os
import time

from prefork.access import FLUSH_LINES, OK, Clock, peer_text
from prefork.listeners import describe_socket

log = logging.getLogger("prefork")

HOOKS = ("pre_request", "post_request")


def observer_for(setup, worker):
    """A RequestObserver for one accept thread, or None when there is nothing to observe. The hooks are
    the hooks object's (the first server's) bound methods, or a --hooks module's functions bound to it."""
    hooks = {name: getattr(setup.hooks, name, None) for name in HOOKS}
    hooks = {name: hook for name, hook in hooks.items() if hook is not None and not getattr(hook, "default_hook", False)}
    access_log = getattr(setup, "access_log", None)
    if not hooks and access_log is None:
        return None
    return RequestObserver(setup.servers, worker, access_log, hooks.get("pre_request"), hooks.get("post_request"))


class RequestObserver:
    """Calls the hooks and writes the access log line, around each request of one accept thread."""

    _failed_hooks = set()             # per process: each raising hook is logged once

    def __init__(self, servers, worker, access_log, pre_request, post_request):
        self.worker, self.access_log = worker, access_log
        self.pre_request, self.post_request = pre_request, post_request
        if access_log is not None:
            self.format = access_log.format
            self.fixed = {id(server): self.format.fixed(describe_socket(server.socket), worker.slot, os.getpid())
                          for server in servers}
        self.clock = Clock()
        self.lines = []
        self.started = 0.0

    def begin(self, server, client_address):
        self.started = time.monotonic()
        if self.pre_request is not None:
            self._call("pre_request", self.pre_request, client_address)

    def end(self, server, client_address, outcome=OK, handler=None):
        """The request ended with outcome; handler (a parking one) may tell its HTTP fields."""
        duration = time.monotonic() - self.started
        if self.post_request is not None:
            self._call("post_request", self.post_request, client_address, outcome, duration)
        if self.access_log is None:
            return
        when, peer, fixed = self.clock.text(time.time()), peer_text(client_address), self.fixed[id(server)]
        fields = getattr(handler, "access_fields", None)
        try:
            line = self.format.line(when, peer, fixed, outcome, duration, fields() if fields is not None else None)
        except Exception:                  # the handler's access_fields(), or what it returned
            self._failed("access_fields")
            line = self.format.line(when, peer, fixed, outcome, duration, None)
        self.lines.append(line)
        if len(self.lines) >= FLUSH_LINES:
            self.flush()

    def flush(self):
        """Write the buffered lines: once per pass of the loop."""
        if self.lines:
            self.access_log.write(self.lines)

    def _call(self, name, hook, *args):
        try:
            hook(*args)
        except Exception:
            self._failed(name)

    def _failed(self, name):
        if name not in self._failed_hooks:
            self._failed_hooks.add(name)
            log.exception("worker %s: %s raised (logged once per worker; the requests go on)", self.worker.slot, name)
