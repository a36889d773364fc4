import pytest

from prefork import AppLoadError
from prefork.loader import check_findable, load_handler, load_module, split_spec
from prefork_workers.echo import EchoHandler


def test_loads_a_handler_class():
    assert load_handler("echo") is EchoHandler is load_handler("prefork_workers.echo:EchoHandler")
    assert load_handler("apps.handlers:PidEcho").__name__ == "PidEcho"


@pytest.mark.parametrize("spec, message", [
    ("prefork_workers.echo", "expected MODULE:CLASS"),
    ("prefork_workers.echo:", "expected MODULE:CLASS"),
    (":EchoHandler", "expected MODULE:CLASS"),
    ("prefork_workers.echo:Echo-Handler", "expected MODULE:CLASS"),
    ("prefork_workers.echo:Missing", "module 'prefork_workers.echo' has no 'Missing'"),
    ("myapp.py:Handler", "name the module, not its file: myapp:Handler"),
    ("src/myapp.py:Handler", "name the module, not its file: src.myapp:Handler"),
    ("apps.handlers:NOT_A_HANDLER", "is not a request handler class"),
    ("apps.handlers:os", "is not a request handler class"),
    ("no_such_module_anywhere:X", "No module named 'no_such_module_anywhere'"),
    ("apps.broken:Handler", "No module named 'no_such_dependency_for_prefork_tests'"),
])
def test_bad_specs_give_one_clear_message(spec, message):
    with pytest.raises(AppLoadError) as info:
        split_spec(spec) and load_handler(spec)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_check_findable_looks_without_importing():
    check_findable("apps.broken:Handler")        # the package exists; its import would fail
    with pytest.raises(AppLoadError, match="no module named 'nope_not_here'"):
        check_findable("nope_not_here.sub:X")


def test_module_raising_at_import_is_reported_with_its_exception(tmp_path, monkeypatch):
    (tmp_path / "exploding.py").write_text("raise RuntimeError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError, match="RuntimeError: bad config"):
        load_module("exploding", "hooks module")
