"""Runs in the master and each child: --user and --group, resolved in the master, dropped in each child.

The master keeps its privileges (it may need them to bind again on an upgrade,
and to signal every worker); each worker drops them after fork, once the
listening sockets are bound, before any hook or handler code runs, and a
zygote (--preload) before it imports the handler. Supplementary groups first,
then the group, then the user (in the other order, the process would no
longer be allowed to change its groups).
"""

import errno
import grp
import os
import pwd
from typing import NamedTuple, Tuple

from prefork.errors import ConfigError, PreforkError

CAP_SETGID, CAP_SETUID = 6, 7


class Credentials(NamedTuple):
    user: str
    uid: int
    gid: int
    groups: Tuple[int, ...]

    def drop(self):
        """In a child: become this user, unless it already is (a worker forked by a zygote that dropped).

        Raises PreforkError naming --user and what the kernel refused.
        """
        if self.held():
            return
        try:
            os.setgroups(self.groups)
            os.setgid(self.gid)
            os.setuid(self.uid)
        except OSError as exc:
            hint = " (the process lacks CAP_SETUID or CAP_SETGID)" if exc.errno == errno.EPERM else ""
            raise PreforkError(f"cannot drop privileges to --user {self.user} (uid {self.uid}, gid {self.gid}): "
                               f"{exc.strerror}{hint}") from None

    def held(self):
        """Whether this process already runs with exactly these credentials."""
        return (os.getuid() == os.geteuid() == self.uid and os.getgid() == os.getegid() == self.gid
                and set(os.getgroups()) == set(self.groups))


def resolve(user, group):
    """Credentials for --user/--group (names or numbers), or None if neither is set; ConfigError if unknown
    or if this process could not become them."""
    if not user and not group:
        return None
    if os.geteuid() != 0:
        raise ConfigError("--user and --group need the master to run as root")
    missing = [name for bit, name in ((CAP_SETUID, "CAP_SETUID"), (CAP_SETGID, "CAP_SETGID"))
               if not _has_capability(bit)]
    if missing:
        raise ConfigError(f"--user and --group need the {' and '.join(missing)} capabilit"
                          f"{'ies' if len(missing) > 1 else 'y'}, which this root process lacks "
                          f"(a capability bounding set: systemd's CapabilityBoundingSet=, setpriv, a container)")
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


def _has_capability(bit):
    """Whether this process has capability bit in its effective set (/proc/self/status, CapEff)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return True                      # cannot tell: let the drop itself say what is wrong
