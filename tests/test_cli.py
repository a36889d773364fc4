"""The command line's parsing, run in this process: flags against the environment and the config file."""

import os
import re

import pytest

from prefork import cli
from prefork.serve.settings import SETTINGS

BOOLEANS = [item for item in SETTINGS if item.kind == "bool"]


@pytest.fixture
def check_config(tmp_path, monkeypatch, capsys):
    """`prefork check-config ARGS` in an empty directory with only the given PREFORK_* variables:
    (exit status, {key: (value, source)}, stderr)."""
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("PREFORK_")]:
        monkeypatch.delenv(name)

    def run(*args, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            code = cli.main(["check-config", *args])
        except SystemExit as exc:        # argparse's usage errors
            code = exc.code
        out, err = capsys.readouterr()
        rows = {m.group(1): (m.group(2), m.group(3)) for m in re.finditer(r"^(\S+) +(.*?) +(default|command line|"
                                                                            r"environment \S+|file .*)$", out, re.M)}
        return code, rows, err
    return run


def test_preload_from_the_environment_is_switched_off_on_the_command_line(check_config):
    code, rows, err = check_config("--no-preload", env={"PREFORK_PRELOAD": "1"})
    assert code == 0, err
    assert rows["preload"] == ("False", "command line")


@pytest.mark.parametrize("item", BOOLEANS, ids=lambda item: item.key)
@pytest.mark.parametrize("layer", ["environment", "file"])
def test_every_boolean_is_switched_both_ways_on_the_command_line(check_config, tmp_path, item, layer):
    flag = item.flag
    no_flag = "--no-" + flag[2:]
    for typed, other_layer, expected in ((no_flag, "true", "False"), (flag, "false", "True")):
        if layer == "environment":
            code, rows, err = check_config(typed, env={item.env: other_layer})
        else:
            (tmp_path / "prefork.toml").write_text(f"{item.key} = {other_layer}\n")
            code, rows, err = check_config("-c", "prefork.toml", typed)
        assert code == 0, err
        assert rows[item.key] == (expected, "command line"), (typed, layer)


@pytest.mark.parametrize("argv, control, extra", [
    (["ctl", "--control", "a.sock", "status"], "a.sock", {}),
    (["ctl", "status", "--control", "a.sock"], "a.sock", {}),
    (["ctl", "status", "--control", "a.sock", "--json"], "a.sock", {"json": True}),
    (["ctl", "status", "--json", "--control=a.sock"], "a.sock", {"json": True}),
    (["ctl", "scale", "-1", "--control", "a.sock"], "a.sock", {"size": "-1"}),
    (["ctl", "scale", "--control", "a.sock", "+2"], "a.sock", {"size": "+2"}),
    (["ctl", "stop", "--control", "a.sock", "--quick"], "a.sock", {"quick": True}),
    (["ctl", "--control", "a.sock", "reload", "--control", "b.sock"], "b.sock", {}),     # the last one typed
    (["ctl", "reopen-logs", "--control", "a.sock"], "a.sock", {}),
    (["ctl", "upgrade", "--control", "a.sock"], "a.sock", {}),
    (["ctl", "status"], "from-env.sock", {}),
])
def test_ctl_takes_control_before_or_after_the_command(monkeypatch, argv, control, extra):
    monkeypatch.setenv("PREFORK_CONTROL", "from-env.sock")
    args = cli.build_parser().parse_args(argv)
    assert args.control == control
    assert {key: getattr(args, key) for key in extra} == extra


@pytest.mark.parametrize("layer", ["command line", "environment", "file"])
def test_settings_with_choices_take_any_case(check_config, tmp_path, layer):
    given = {"log_level": "DEBUG", "policy": "Adaptive"}
    if layer == "command line":
        code, rows, err = check_config("--log-level", "DEBUG", "--policy", "Adaptive")
    elif layer == "environment":
        code, rows, err = check_config(env={"PREFORK_LOG_LEVEL": "DEBUG", "PREFORK_POLICY": "Adaptive"})
    else:
        (tmp_path / "prefork.toml").write_text("".join(f'{key} = "{value}"\n' for key, value in given.items()))
        code, rows, err = check_config("-c", "prefork.toml")
    assert code == 0, err
    assert rows["log_level"][0] == "debug" and rows["policy"][0] == "adaptive", rows
    assert rows["log_level"][1].startswith(layer.split()[0])


def test_a_choice_that_is_none_in_any_case_is_still_refused(check_config):
    code, _, err = check_config("--policy", "Forking")
    assert code == 2 and "--policy: must be one of serial, fork, thread, prefork, adaptive, got 'Forking'" in err


def test_the_same_bind_twice_is_a_usage_error_naming_where_it_came_from(check_config, tmp_path):
    code, _, err = check_config(env={"PREFORK_BIND": "unix:a.sock, unix:./a.sock"})
    assert code == 2 and err == "prefork: error: PREFORK_BIND unix:a.sock and unix:./a.sock are the same " \
                                "address, given twice\n"
    assert not (tmp_path / "a.sock").exists()
