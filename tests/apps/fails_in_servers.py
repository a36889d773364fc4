"""A handler that imports anywhere but in a `prefork serve` process, as one whose import
needs something only the tune process has would: `prefork tune` loads it, its server's
workers cannot."""

import sys

import prefork

if sys.argv[1:2] == ["serve"]:
    raise ImportError("this handler cannot be imported by a server (a test of prefork tune)")


class Handler(prefork.BaseRequestHandler):
    def handle(self):
        pass
