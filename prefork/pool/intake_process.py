"""Runs in each worker: whether one accept thread takes connections now, new (accepted) or handed over.

A thread takes them while it holds fewer than its share of --max-connections,
no more than the pool's average (fair_share(), from the counts every thread
writes into the scoreboard), and while descriptors last. A thread that
stops taking rings the pool's intake bell (an eventfd in every thread's
epoll, edge-triggered): the paused threads look again at once, not at their
next RECHECK, and one under its share takes over. Some thread always holds
no more than the average, so connections wait at most until it wakes. Taking or not is
done by registering the listeners (EPOLLEXCLUSIVE) and the hand-off channel
in the thread's epoll, or taking them out: a thread that does not take is
not woken for a connection, and another one is. docs/design.md, "Parking".
"""

import logging
import os
import select

from prefork.pool import scoreboard

log = logging.getLogger("prefork")

RECHECK = 0.005              # how often the decision is made again while nothing changes
FREE_CONNECTIONS = 4         # below this many, a thread accepts without looking at the others
FD_PAUSE = 0.1               # seconds without accepting after EMFILE


def fair_share(total, threads):
    """The most connections one accept thread should hold: the pool's average, plus a little slack.

    Some thread always holds no more than the average, so some thread always accepts.
    """
    if threads <= 0:
        return total + 1
    return -(-total // threads) + max(1, total // (10 * threads))


class Intake:
    """One accept thread's decision to take connections, and its registrations in the thread's epoll."""

    def __init__(self, poller, listener_fds, channel_fd, cap, process):
        self.poller, self.listener_fds, self.channel_fd = poller, tuple(listener_fds), channel_fd
        self.cap, self.process = cap, process
        self.bell = process.setup.intake_bell
        poller.register(self.bell, select.EPOLLIN | select.EPOLLET)       # wakes every thread, once a ring
        self.board = process.setup.board
        self.taking = self.adopting = False            # listeners / hand-off channel registered
        self.decided_for, self.recheck_at = -1, 0.0
        self.fd_pause_until = 0.0
        self.said_full = False

    def decide(self, held, now):
        """Take connections (or not) for a thread holding `held`.

        Decided again when `held` changes, on every pass while not taking
        (so that a paused thread comes back as soon as it is under its share
        again), and every RECHECK otherwise; the scoreboard is read only then.
        """
        if held == self.decided_for and self.taking and now < self.recheck_at:
            return
        self.decided_for, self.recheck_at = held, now + RECHECK
        if held >= self.cap:
            if not self.said_full:
                self.said_full = True
                log.warning("worker %s holds %s connections (--max-connections %s): it accepts no more "
                            "until some close; new ones wait for other workers", self.process.worker.slot,
                            held, self.process.setup.config.max_connections)
            want = False
        else:
            want = now >= self.fd_pause_until and self.within_share(held)
        if held < self.cap * 0.9:
            self.said_full = False
        self.take(want)

    def within_share(self, held):
        """Whether a thread holding `held` should take one more: under its fair share, or nobody else takes."""
        if held < FREE_CONNECTIONS:
            return True
        return held <= fair_share(*self.board.connection_load())

    def out_of_fds(self, now):
        """accept() failed with EMFILE or the like: take nothing for FD_PAUSE."""
        self.fd_pause_until = now + FD_PAUSE
        self.decided_for = -1
        self.take(False)

    def take(self, on):
        """Register (or not) the listeners and the hand-off channel.

        An outdated worker (a newer generation serves) accepts but adopts nothing: what a retiring
        worker hands over goes to the newest generation.
        """
        adopt = on and not self.process.header.get(scoreboard.OUTDATED)
        for fd in self.listener_fds:
            self._register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE, on != self.taking, on)
        self._register(self.channel_fd, select.EPOLLIN, adopt != self.adopting, adopt)
        if self.taking and not on:
            self._ring()
        self.taking, self.adopting = on, adopt

    def _ring(self):
        """We stop taking: wake every thread to look again, so that one under its share takes over now."""
        try:
            os.eventfd_write(self.bell, 1)
        except BlockingIOError:                      # the counter is full: they are awake anyway
            pass

    def _register(self, fd, flags, change, on):
        if change and on:
            self.poller.register(fd, flags)
        elif change:
            self.poller.unregister(fd)
