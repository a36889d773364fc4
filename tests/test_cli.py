"""The command line's parsing, run in this process: flags against the environment and the config file."""

import os
import re

import pytest

from prefork import cli
from prefork.settings import SETTINGS

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
