"""A handler module whose import fails, as a deploy with a missing dependency would."""

import no_such_dependency_for_prefork_tests  # noqa: F401

import prefork


class Handler(prefork.BaseRequestHandler):
    def handle(self):
        pass
