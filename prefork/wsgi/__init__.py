"""Runs in the serving process: WSGI (PEP 3333) apps on prefork's pools, HTTP/1.1 parsed by httptools.

    from prefork import wsgi
    handler = wsgi.handler_for(app)                 # a parking handler class serving app
    with prefork.TCPServer(("127.0.0.1", 8000), handler, policy=prefork.Prefork(workers=4)) as server:
        server.serve_forever()

or from the command line: ``prefork serve --wsgi myapp:app``. Needs httptools:
``pip install 'prefork[wsgi]'``. README "WSGI apps" and docs/design.md "WSGI".
"""

import functools

from prefork.errors import AppLoadError

try:
    import httptools  # noqa: F401  (the parser: checked here, so that a missing one is one clear line)
except ImportError:                   # pragma: no cover - depends on the installation
    raise AppLoadError("serving WSGI apps needs httptools: pip install 'prefork[wsgi]'") from None

from prefork.wsgi.loading import check_findable, load_app, split_app_spec
from prefork.wsgi.handler import WSGIRequestHandler, handler_for
from prefork.wsgi.request import Limits
from prefork.wsgi.response import FileWrapper

__all__ = ["handler_for", "WSGIRequestHandler", "Limits", "FileWrapper", "load_app", "loader_for",
           "check_findable", "split_app_spec"]


def load_handler(spec, root_path="", limits=Limits(), threads=1):
    """Import the app spec names and return a handler class serving it (what each worker runs)."""
    return handler_for(load_app(spec), root_path=root_path, limits=limits, threads=threads)


def loader_for(spec, root_path="", limits=Limits(), threads=1):
    """A callable loading spec's handler class: a pool runs it in each worker, or once in a zygote."""
    return functools.partial(load_handler, spec, root_path, limits, threads)
