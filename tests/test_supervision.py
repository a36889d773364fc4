import os

import pytest

from prefork import Config, ConfigError
from prefork.serve.settings import settings_markdown

from conftest import REPO


def test_defaults_are_valid_and_frozen():
    config = Config()
    assert config.graceful_timeout == 30.0 and config.worker_timeout == 30.0
    with pytest.raises(Exception):
        config.worker_timeout = 1


@pytest.mark.parametrize("field, value, message", [
    ("graceful_timeout", -1, "graceful_timeout must be at least 0, got -1"),
    ("worker_timeout", -1, "worker_timeout must be at least 0, got -1"),
    ("worker_timeout", "10", "worker_timeout must be a number"),
    ("max_requests", 1.5, "max_requests must be a whole number"),
    ("max_requests", True, "max_requests must be a number"),
    ("max_boot_failures", 0, "max_boot_failures must be at least 1"),
    ("monitor_interval", 0, "monitor_interval must be greater than 0"),
    ("monitor_interval", float("inf"), "monitor_interval must be a finite number"),
    ("worker_timeout", float("nan"), "worker_timeout must be a finite number"),
    ("spare_workers", 2000, "spare_workers must be between 0 and 1024"),
    ("client_timeout", -2, "client_timeout must be at least 0"),
    ("preload", 1, "preload must be true or false"),
    ("defer_accept", "no", "defer_accept must be true or false"),
])
def test_bad_values_name_the_api_field(field, value, message):
    """The API names its own field; the CLI names the flag (tests/integration/test_cli_serve.py)."""
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})
    assert str(info.value).startswith(message)
    assert info.value.setting == field
    assert str(info.value.named("--flag")).startswith("--flag " + message.split(" ", 1)[1])


def test_replace_validates():
    assert Config().replace(max_requests=5).max_requests == 5
    with pytest.raises(ConfigError):
        Config().replace(max_requests=-5)


def test_docs_settings_table_is_generated_from_the_field_table():
    with open(os.path.join(REPO, "docs", "settings.md")) as f:
        assert f.read() == settings_markdown(), "run: prefork settings > docs/settings.md"
