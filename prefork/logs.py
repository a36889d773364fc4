"""Where `prefork serve` logs: stderr, or a file that can be reopened after logrotate moved it.

The master opens the file before forking, so every worker inherits the
handler. SIGUSR1 (or `prefork ctl reopen-logs`) makes the master reopen it and
pass SIGUSR1 on to its workers, which reopen their own copy at the next pass
of their loop, never inside the signal handler. With --user, the file is
given to that user, so workers that dropped privileges can reopen it.
"""

import logging
import os
import sys

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def configure(level, path="", owner=None):
    """Log at level to path (appending) or stderr; owner (uid, gid) gets the file. Raises OSError."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if path:
        handler = logging.FileHandler(path, encoding="utf-8")
        _give(path, owner)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.prefork_log_owner = owner


def reopen():
    """Reopen every log file of this process (after a rotation). Returns the paths reopened."""
    root = logging.getLogger()
    reopened = []
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
            _give(handler.baseFilename, getattr(root, "prefork_log_owner", None))
            reopened.append(handler.baseFilename)
    return reopened


def _give(path, owner):
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
