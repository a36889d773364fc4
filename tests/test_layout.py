"""The layout holds: the import layers, where each module runs, and docs that name only what exists.

docs/design.md ("The shape") draws the layers; pyproject.toml states them as import-linter contracts.
"""

import argparse
import ast
import importlib
import inspect
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import prefork
import prefork.cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prefork"
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")

# Files and flags that the docs name but that belong to the user's project or to other programs.
USER_FILES = {"myapp.py", "prefork.toml", "prefork.log", "prefork.pid", "prefork.pid.oldbin"}
OTHER_PROGRAMS_FLAGS = {
    "--accept", "--fdname", "--inetd",          # systemd-socket-activate
    "--fork", "--mount-proc",                  # unshare
    "--no-cache-dir",                          # pip
    "--now", "--value",                        # systemctl
    "--system", "--uid",                       # useradd
    "--worker-connections", "--keep-alive", "--error-logfile", "--reload", "--access-logfile",  # gunicorn, in
    "--statsd-host", "--certfile", "--keyfile", "--forwarded-allow-ips",                       # README's table
    "--http-socket", "--http11-socket",        # uWSGI, in the benchmark
    "--max-worker-lifetime", "--max-worker-lifetime-delta",    # uWSGI, in the README
    "--cpus",                                  # docker run
}
WSGI_ENVIRON_KEYS = {"input", "errors", "file_wrapper", "multithread", "multiprocess", "url_scheme", "version",
                     "run_once", "input_terminated"}        # wsgi.input names an environ key, not prefork.wsgi's
FILE_SUFFIXES = ("py", "md", "c", "json", "toml", "png", "pid", "log", "oldbin", "txt", "sh")


def modules():
    """Every module of the package, by dotted name (not __main__, which runs the CLI when imported)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if not name.endswith("__main__"):
            found[name] = path
    return found


def lint_imports(cwd, env=None):
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(120)
def test_the_import_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 7 kept, 0 broken." in result.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module, line, contracts", [
    ("prefork/commands.py", "from prefork.supervision import Config", {"layers"}),               # up a layer
    ("prefork/tune/tuner.py", "from prefork.serve import settings", {"layers", "serve | tune"}),        # across siblings
    ("prefork/pool/planner.py", "import socket", {"pure decisions"}),                          # a pure module
    ("prefork/pool/worker.py", "from prefork.pool import master", {"pool layers"}),            # up, inside pool/
])
def test_an_import_against_the_contracts_is_caught(tmp_path, module, line, contracts):
    shutil.copytree(PACKAGE, tmp_path / "prefork", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stdout
    broken = {text.removesuffix(" BROKEN") for text in result.stdout.splitlines() if text.endswith(" BROKEN")}
    assert broken == contracts, result.stdout


def test_every_module_says_which_process_it_runs_in():
    for name, path in modules().items():
        first = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0]
        assert "Runs in " in first, f"{name}: the docstring's first line does not say where it runs: {first!r}"
        if name.startswith("prefork.pool.") and name.endswith("_process"):
            assert not first.startswith("Runs in the master"), name
        elif name.startswith("prefork.pool.") or name == "prefork.pool":
            assert "Runs in the master" in first, name


# -- the docs name only what exists -------------------------------------------------------------------

def _prose():
    """(where, text): every docstring and comment of the package, the README and docs/*.md."""
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    yield f"{where}:{getattr(node, 'lineno', 1)}", doc
        for number, text in enumerate(source.splitlines(), 1):
            if "#" in text:
                yield f"{where}:{number}", text[text.index("#"):]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield str(path.relative_to(ROOT)), path.read_text()


def _our_flags():
    flags = set()

    def collect(parser):
        for action in parser._actions:
            flags.update(option for option in action.option_strings if option.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    collect(sub)
    collect(prefork.cli.build_parser())
    return flags


def _has(owner, attribute):
    """owner (a module or class) has attribute, as a class attribute, a field, or one set on self."""
    if hasattr(owner, attribute):
        return True
    if not isinstance(owner, type):
        return False
    for klass in owner.__mro__:
        if attribute in getattr(klass, "__annotations__", {}):
            return True
        try:
            if re.search(rf"\bself\.{attribute}\b", inspect.getsource(klass)):
                return True
        except (OSError, TypeError):
            pass
    return False


def _defined_names(path):
    """(what a module defines at its top level: functions, classes, constants; its classes' members)."""
    top, inner = set(), set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            top.update(target.id for target in targets if isinstance(target, ast.Name))
        if isinstance(node, ast.ClassDef):
            inner.update(member.name for member in node.body if isinstance(member, ast.FunctionDef))
            inner.update(member.target.id for member in node.body
                         if isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name))
    return top, inner


def _repository_files():
    """The repository's files, as git sees them (tracked, or new and not ignored): no caches, no builds."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.splitlines()


def _importable_with(module, attribute):
    """A module of the standard library or a dependency (socketserver, psutil, ...) that has attribute."""
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


class References:
    """What the package defines, for checking the names prose uses."""

    def __init__(self):
        self.modules = {name: importlib.import_module(name) for name in modules()}
        self.by_leaf, self.classes = {}, {}
        for name, module in self.modules.items():
            self.by_leaf.setdefault(name.rsplit(".", 1)[-1], []).append(module)
            for key, value in vars(module).items():
                if isinstance(value, type) and value.__module__.startswith("prefork"):
                    self.classes.setdefault(key, set()).add(value)
        # Names defined at a module's top level and nowhere else (command.run is a method's, not run()'s).
        defined = [_defined_names(path) for path in modules().values()]
        self.defined = set().union(*(top for top, _ in defined)) - set().union(*(inner for _, inner in defined))
        self.files = {pathlib.PurePath(path).name for path in _repository_files()}
        self.flags = _our_flags()

    def problems(self, text):
        """The names in text that do not exist, each as "kind: name"."""
        found = []
        for match in re.finditer(r"(?<![\w./*-])((?:[\w-]+/)*[\w-]+\.(?:py|md|c|json|toml))\b", text):
            path = match.group(1)
            if path in USER_FILES:
                continue
            if "/" in path:
                if not any((base / path).exists() for base in (ROOT, PACKAGE)):
                    found.append(f"path: {path}")
            elif path not in self.files:
                found.append(f"file: {path}")
        for match in re.finditer(r"(?<![\w.])prefork(?:\.\w+)+", text):
            if not self._dotted_exists(match.group(0)):
                found.append(f"name: {match.group(0)}")
        for match in re.finditer(r"(?<![\w.])([A-Za-z_]\w*)\.([A-Za-z_]\w*)\b(?!\.\w)", text):
            head, attribute = match.groups()
            if attribute in FILE_SUFFIXES or (head == "wsgi" and attribute in WSGI_ENVIRON_KEYS):
                continue
            if head in self.by_leaf:
                missing = not any(_has(module, attribute) for module in self.by_leaf[head])
            elif head in self.classes:
                missing = not any(_has(klass, attribute) for klass in self.classes[head])
            else:                               # one of our names, through a module that is gone
                missing = head.islower() and attribute in self.defined and not _importable_with(head, attribute)
            if missing:
                found.append(f"name: {match.group(0)}")
        for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w-])", text):
            flag = match.group(0)
            if flag not in self.flags and flag not in OTHER_PROGRAMS_FLAGS:
                found.append(f"flag: {flag}")
        return found

    def _dotted_exists(self, dotted):
        parts = dotted.split(".")
        if parts[-1] in FILE_SUFFIXES:
            return True                               # a file name such as prefork.toml
        owner = prefork
        for index, part in enumerate(parts[1:], 1):
            name = ".".join(parts[:index + 1])
            if name in self.modules:
                owner = self.modules[name]
            elif _has(owner, part):
                owner = getattr(owner, part, None)
            else:
                return False
        return True


@pytest.fixture(scope="module")
def references():
    return References()


def test_docstrings_and_docs_name_only_what_exists(references):
    problems = [f"{where}: {problem}" for where, text in _prose() for problem in references.problems(text)]
    assert problems == []


@pytest.mark.parametrize("text, problem", [
    ("see Master.spawn_worker", "name: Master.spawn_worker"),          # a method that is gone
    ("see planner.Spawn", "name: planner.Spawn"),                     # a class of another module
    ("prefork.pool.zygotes keeps them", "name: prefork.pool.zygotes"),  # a module that was renamed
    ("as operations.py does", "file: operations.py"),
    ("a field of config.Config", "name: config.Config"),                # module.Class of a module gone
    ("as in config.checked", "name: config.checked"),                   # module.function of a module gone
    ("see build.py", "file: build.py"),                                 # no such file in the repository
    ("see prefork/pool/nothing.py", "path: prefork/pool/nothing.py"),
    ("with --max-request 5", "flag: --max-request"),                 # a setting misspelled
])
def test_a_name_that_does_not_exist_is_caught(references, text, problem):
    assert references.problems(text) == [problem]


def test_names_that_exist_pass(references):
    text = ("Master.stop(), planner.plan(), exits.zygote_exit, prefork.pool.master.Master, prefork.Prefork, "
            "WorkerView.uss, pool/zygote_process.py, docs/design.md, scripts/bench.py, --max-requests, "
            "--no-defer-accept, prefork.toml, --fork, server.stopping, socketserver.ThreadingMixIn, "
            "psutil.Process, supervision.Config, server.RequestHandlerClass")
    assert references.problems(text) == []


def test_the_public_names_did_not_move():
    """Programs written against prefork before the layout change keep working: every name of __all__."""
    names = {"BaseServer", "TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer", "ForkingMixIn",
             "ThreadingMixIn", "ForkingTCPServer", "ForkingUDPServer", "ForkingUnixStreamServer",
             "ForkingUnixDatagramServer", "ThreadingTCPServer", "ThreadingUDPServer", "ThreadingUnixStreamServer",
             "ThreadingUnixDatagramServer", "BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler",
             "Policy", "Serial", "ForkPerRequest", "ThreadPerRequest", "Prefork", "Adaptive", "Config", "Master",
             "serve_together", "PreforkError", "ConfigError", "BindError", "AppLoadError", "HaltServer",
             "ParkingRequestHandler", "ParkingLineHandler", "ParkingHTTPMixIn", "ParkingHTTPRequestHandler"}
    assert set(prefork.__all__) == names
    assert all(getattr(prefork, name) is not None for name in names)
    assert prefork.Master.__module__ == "prefork.pool.master"
