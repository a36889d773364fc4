"""Request hooks for `prefork serve --hooks apps.request_hooks`.

pre_request and post_request append a line to the file named by
$PREFORK_TEST_EVENTS; post_request raises as well while $PREFORK_TEST_HOOK_RAISES
is set (a hook that raises must not fail the request, and is logged once per worker).
"""

import os


def _record(*words):
    with open(os.environ["PREFORK_TEST_EVENTS"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


def pre_request(server, client_address):
    _record("pre_request", os.getpid(), client_address[0])


def post_request(server, client_address, outcome, duration):
    _record("post_request", os.getpid(), client_address[0], outcome, f"{duration:.6f}")
    if os.environ.get("PREFORK_TEST_HOOK_RAISES"):
        raise RuntimeError("post_request raised on purpose")
