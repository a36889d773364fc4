"""Runs in whichever process loads the app (a worker, or a zygote with --preload): MODULE:APP to a WSGI callable.

The forms gunicorn takes: ``module:app``, ``module:create_app()`` (a factory,
called once per load), ``module:create_app('production', debug=False)``
(literal arguments only) and ``module`` alone, for its ``application``.
"""

import ast

from prefork import loader
from prefork.errors import AppLoadError


def split_app_spec(spec):
    """(module, attribute path, call arguments or None), or raise AppLoadError naming what is wrong."""
    module, _, expression = spec.partition(":")
    expression = expression.strip() or "application"
    usage = f"bad WSGI app {spec!r}: expected MODULE:APP or MODULE:FACTORY(), as in myapp:app or myapp:create_app()"
    if not module or module.endswith(".py") or not all(part.isidentifier() for part in module.split(".")):
        raise AppLoadError(usage)
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise AppLoadError(usage) from None
    call = None
    if isinstance(tree, ast.Call):
        try:
            call = ([ast.literal_eval(arg) for arg in tree.args],
                    {kw.arg: ast.literal_eval(kw.value) for kw in tree.keywords if kw.arg})
        except ValueError:
            raise AppLoadError(f"bad WSGI app {spec!r}: a factory's arguments must be literals") from None
        tree = tree.func
    path = []
    while isinstance(tree, ast.Attribute):
        path.insert(0, tree.attr)
        tree = tree.value
    if not isinstance(tree, ast.Name):
        raise AppLoadError(usage)
    return module, ".".join([tree.id, *path]), call


def check_findable(spec):
    """Fail early, without running the app's code, when its module's top package is missing."""
    loader.check_module_findable(split_app_spec(spec)[0], f"WSGI app {spec!r}")


def load_app(spec):
    """Import the module, find the app (calling the factory), and check that it is callable."""
    module_name, name, call = split_app_spec(spec)
    obj = loader.load_module(module_name, "WSGI app module")
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError(f"cannot import WSGI app {spec!r}: module {module_name!r} has no {name!r}") from None
    if call is not None:
        args, kwargs = call
        try:
            obj = obj(*args, **kwargs)
        except Exception as exc:
            raise AppLoadError(f"WSGI app factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not callable(obj):
        raise AppLoadError(f"WSGI app {spec!r} is not callable; it is {type(obj).__name__} {obj!r:.60}"
                           + ("" if call else " (a factory? write MODULE:FACTORY())"))
    return obj
