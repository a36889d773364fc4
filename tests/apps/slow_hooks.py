"""A pre_fork hook that takes 0.6 s, as a slow one in the master might."""

import time


def pre_fork(server, worker):
    time.sleep(0.6)
