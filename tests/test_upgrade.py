"""What a new master makes of the descriptors an old master passed it (upgrade.inherited)."""

import socket

from prefork.upgrade import inherited


def test_systemds_sockets_come_back_as_activated_with_their_names_and_the_variables_go():
    own, web, local = (socket.socket() for _ in range(3))
    environ = {"PREFORK_FDS": f"{own.fileno()},{web.fileno()},{local.fileno()}",
               "PREFORK_SYSTEMD_FDS": f"{web.fileno()}=web:{local.fileno()}=a=b,c",   # names may hold = and ,
               "PREFORK_UPGRADE_FD": "9", "OTHER": "kept"}
    got = inherited(environ)
    assert [s.fileno() for s in got.listeners] == [own.fileno()]
    assert [(s.fileno(), name) for s, name in got.activated] == [(web.fileno(), "web"), (local.fileno(), "a=b,c")]
    assert got.control is None and got.ready == 9 and environ == {"OTHER": "kept"}
    for sock in (own, web, local):
        assert not sock.get_inheritable()
    for sock in [*got.listeners, *(s for s, _ in got.activated)]:
        sock.detach()                  # the same fds as ours: closed once, below, not again at collection
    for sock in (own, web, local):
        sock.close()


def test_a_first_master_inherits_nothing():
    assert inherited({}) == ([], [], None, None)
