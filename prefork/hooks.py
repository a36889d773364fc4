"""Runs in the master and each worker: the supervision hooks of a server, doing nothing until overridden.

BaseServer (servers.py) inherits them; a subclass overrides the ones it
needs, and `prefork serve --hooks MODULE` sets a module's functions on the
first server instead. Where each runs, and when, is in the BaseServer
docstring and the README's "Hooks".
"""


def _default_hook(method):
    """Mark a per-request hook that does nothing: a worker calls it only when it is overridden."""
    method.default_hook = True
    return method


class Hooks:
    """The hooks' defaults: every one a no-op."""

    def on_starting(self):
        pass

    def pre_fork(self, worker):
        pass

    def post_fork(self, worker):
        pass

    def worker_ready(self, worker):
        pass

    def worker_exit(self, worker, status, reason):
        pass

    def on_exit(self):
        pass

    @_default_hook
    def pre_request(self, client_address):
        pass

    @_default_hook
    def post_request(self, client_address, outcome, duration):
        pass
