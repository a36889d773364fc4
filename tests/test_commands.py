"""The control protocol's requests, checked before anything acts on them (commands.from_request)."""

import dataclasses

import pytest

from prefork import commands
from prefork.errors import ConfigError


@pytest.mark.parametrize("request_, expected", [
    ({"command": "status"}, commands.Status()),
    ({"command": "stop"}, commands.Stop()),
    ({"command": "stop", "quick": False}, commands.Stop()),
    ({"command": "stop", "quick": True}, commands.Stop(quick=True)),
    ({"command": "scale", "size": "+2"}, commands.Scale(size=2, relative=True)),
    ({"command": "scale", "size": "-1"}, commands.Scale(size=-1, relative=True)),
    ({"command": "scale", "size": 8}, commands.Scale(size=8)),
    ({"command": "reload"}, commands.Reload()),
    ({"command": "reopen-logs"}, commands.ReopenLogs()),
    ({"command": "upgrade"}, commands.Upgrade()),
])
def test_well_formed_requests_become_commands(request_, expected):
    command = commands.from_request(request_, origin="prefork ctl")
    assert command == dataclasses.replace(expected, why=f"prefork ctl {request_['command']}")


SIZE = 'scale: "size" must be text such as "8", "+1", "-1", or a whole number, got '


@pytest.mark.parametrize("request_, message", [
    ({"command": "stop", "quick": "false"}, 'stop: "quick" must be true or false (a JSON boolean), got "false"'),
    ({"command": "stop", "quick": 0}, 'stop: "quick" must be true or false (a JSON boolean), got 0'),
    ({"command": "stop", "quick": None}, 'stop: "quick" must be true or false (a JSON boolean), got null'),
    ({"command": "stop", "quik": True}, 'stop: unknown key "quik"; stop takes "quick"'),
    ({"command": "stop", "why": "x"}, 'stop: unknown key "why"; stop takes "quick"'),
    ({"command": "status", "json": True}, 'status: unknown key "json"; status takes no other key'),
    ({"command": "scale", "size": True}, SIZE + 'true'),
    ({"command": "scale", "size": 1.5}, SIZE + '1.5'),
    ({"command": "scale", "size": ["+1"]}, SIZE + '["+1"]'),
    ({"command": "scale"}, 'scale: "size" is missing'),
    ({"command": "scale", "size": "lots"}, "scale wants N, +N or -N, got 'lots'"),
    ({"command": 5}, 'unknown command 5; the commands are status, scale, reload, stop, reopen-logs, upgrade'),
    ({"command": ["stop"]}, 'unknown command ["stop"]; the commands are'),
    ({}, 'the request has no "command"'),
    ([{"command": "stop"}], "not a JSON request object: an array"),
    ("stop", "not a JSON request object: a string"),
])
def test_wrong_keys_and_types_are_refused_naming_the_key(request_, message):
    with pytest.raises(ConfigError) as info:
        commands.from_request(request_, origin="prefork ctl")
    assert str(info.value).startswith(message), str(info.value)
