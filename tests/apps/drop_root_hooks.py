"""A post_fork hook that drops root to nobody, as servers started as root do."""

import os


def post_fork(server, worker):
    os.setgid(65534)
    os.setuid(65534)
