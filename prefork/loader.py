"""Runs in whichever process imports the handler: ``module:Object`` strings to handler classes and hook modules.

Used by the CLI: in each worker after fork, or with --preload once in a
zygote that forks the workers (pool/zygote_process.py); either way new workers pick up
new code (SIGHUP) and the master never runs the application's import-time
code. The in-process policies (serial, fork, thread) import it in the server.
"""

import importlib
import importlib.util
import socketserver

from prefork.errors import AppLoadError


# The ready-made handlers of the repository's workers/ folder, installed as prefork_workers, by name.
BUILTIN_HANDLERS = {"echo": "prefork_workers.echo:EchoHandler", "hello": "prefork_workers.hello:HelloHandler"}


def split_spec(spec):
    """Split ``module:Object`` (Object may be dotted) or a built-in's name, or raise AppLoadError."""
    spec = BUILTIN_HANDLERS.get(spec, spec)
    module, sep, name = spec.partition(":")
    if module.endswith(".py") and sep:
        raise AppLoadError(f"bad handler {spec!r}: name the module, not its file: "
                           f"{module[:-3].replace('/', '.')}:{name}")
    if not sep or not module or not name or not all(part.isidentifier() for part in name.split(".")):
        raise AppLoadError(f"bad handler {spec!r}: expected MODULE:CLASS, as in myapp:Handler, "
                           f"or a built-in handler: echo, hello")
    return module, name


def check_findable(spec):
    """Fail early, without running the application's code, when its top package is missing."""
    check_module_findable(split_spec(spec)[0], f"handler {spec!r}")


def check_module_findable(module, what):
    """AppLoadError naming what (such as "handler 'myapp:Handler'") if module's top package is missing."""
    top = module.split(".")[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise AppLoadError(f"cannot import {what}: {exc}") from None
    if found is None:
        raise AppLoadError(f"cannot import {what}: no module named {top!r}")


def load_handler(spec):
    """Import and return the request handler class that ``spec`` names."""
    module_name, name = split_spec(spec)
    spec = BUILTIN_HANDLERS.get(spec, spec)
    module = _import(module_name, f"cannot import handler {spec!r}")
    obj = module
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import handler {spec!r}: module {module_name!r} has no {name!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, socketserver.BaseRequestHandler)):
        raise AppLoadError(
            f"handler {spec!r} is not a request handler class (a subclass of "
            f"socketserver.BaseRequestHandler); it is {type(obj).__name__} {obj!r:.60}")
    return obj


def load_module(module_name, what):
    """Import a module for the CLI (such as --hooks), or raise AppLoadError."""
    return _import(module_name, f"cannot import {what} {module_name!r}")


def _import(module_name, prefix):
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"{prefix}: {exc}") from exc
    except Exception as exc:  # the module's own code raised (SyntaxError included)
        raise AppLoadError(f"{prefix}: {type(exc).__name__}: {exc}") from exc
