"""Runs in the master: what its loop asks of a service it looks after beside the workers.

The services are `prefork serve`'s: the control socket, systemd's notifications,
an upgrade in progress (serve/). Each inherits Service, whose methods do nothing.
"""

from typing import Optional, Protocol


class Service(Protocol):
    """Called by the master's loop, from its own thread; none may block.

    A service may also have: status() -> dict (merged into `prefork ctl status`),
    claim(pid, status) -> bool (an exit of a child it started), begin(master) -> str
    (an upgrade in place), and the flags other_master_serves and main_is_elsewhere.
    """

    def start(self, selector) -> None:
        """Register its fds with the selector, with the service itself as the key's data."""

    def on_event(self, master, fileobj, mask) -> None:
        """One of its fds is ready."""

    def on_pass(self, master, now: float) -> Optional[float]:
        """Once per pass, after the plan was carried out: the monotonic time to be called again, or None."""
        return None

    def close(self, in_child: bool = False) -> None:
        """At the end; in a new child, only release its fds."""
