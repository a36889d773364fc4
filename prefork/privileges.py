"""Who the workers run as: --user and --group, resolved once in the master, dropped in each worker.

The master keeps its privileges (it may need them to bind again on an upgrade,
and to signal every worker); each worker drops them after fork, once the
listening sockets are bound, before any hook or handler code runs:
supplementary groups first, then the group, then the user (in the other
order, the process would no longer be allowed to change its groups).
"""

import grp
import os
import pwd
from typing import NamedTuple, Tuple

from .errors import ConfigError


class Credentials(NamedTuple):
    user: str
    uid: int
    gid: int
    groups: Tuple[int, ...]

    def drop(self):
        """In a worker: become this user. Raises OSError if the kernel refuses."""
        os.setgroups(self.groups)
        os.setgid(self.gid)
        os.setuid(self.uid)


def resolve(user, group):
    """Credentials for --user/--group (names or numbers), or None if neither is set; ConfigError if unknown."""
    if not user and not group:
        return None
    if os.geteuid() != 0:
        raise ConfigError("--user and --group need the master to run as root")
    entry = _user(user) if user else pwd.getpwuid(os.geteuid())
    gid = _group(group) if group else entry.pw_gid
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return Credentials(entry.pw_name, entry.pw_uid, gid, groups)


def _user(text, label="--user"):
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except KeyError:
        raise ConfigError(f"{label}: no such user {text!r}") from None


def _group(text, label="--group"):
    try:
        return grp.getgrgid(int(text)).gr_gid if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(f"{label}: no such group {text!r}") from None


def owner_of(text):
    """(uid, gid) for --socket-owner USER[:GROUP]; -1 keeps a part as it is."""
    user, _, group = text.partition(":")
    uid = _user(user, "--socket-owner").pw_uid if user else -1
    gid = _group(group, "--socket-owner") if group else -1
    return uid, gid
