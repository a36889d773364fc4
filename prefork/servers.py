"""Runs in the serving process: socketserver-compatible servers whose concurrency is a pool policy.

Every class here *is* a subclass of its socketserver namesake, so every hook
a user overrides (verify_request, handle_error, finish_request,
shutdown_request, server_bind, server_activate, get_request,
service_actions, ...) is called as socketserver calls it, and
``isinstance(server, socketserver.TCPServer)`` holds.

The policy is the only seam. It takes over serve_forever() and
process_request():

- serve_forever() runs the in-process request loop (Serial, ForkPerRequest,
  ThreadPerRequest) or becomes the master of a worker pool (Prefork).
- process_request() is socketserver's own: inline, ForkingMixIn's fork, or
  ThreadingMixIn's thread. ``policy=ForkPerRequest()`` is shorthand for
  mixing ForkingMixIn into the class: the server is built from the class
  with that mixin in front, exactly as if you had written it.

What prefork adds to socketserver's behaviour:

- shutdown() returns at once instead of after the next 0.5 s poll.
- handle_error() logs the traceback through the "prefork" logger.
- Unix servers remove the socket file they created in server_close().
- stats(), the supervision hooks (on_starting, pre_fork, post_fork,
  worker_ready, worker_exit, on_exit) and, for long-lived handlers,
  ``self.server.stopping`` and ``self.server.heartbeat()``.
"""

import functools
import logging
import os
import socket
import socketserver
import ssl
import sys
import threading
import warnings

from prefork import commands
from prefork.handling import CLIENT_WENT_AWAY, ReplySocket, end_tls, proxied, tls_handshake
from prefork.hooks import Hooks
from prefork.inprocess import RequestLoop
from prefork.listeners import UnixPathOwner
from prefork.policies import ForkPerRequest, Policy, Serial, ThreadPerRequest
from prefork.pool.master import Master
from prefork.supervision import Config

log = logging.getLogger("prefork")


class BaseServer(Hooks, socketserver.BaseServer):
    """socketserver.BaseServer with a pool policy.

    Methods for the caller, besides socketserver's:

    - __init__(..., policy=None, config=None)   # keywords, after socketserver's arguments
    - stats() -> dict                            # from any thread while serve_forever() runs
    - scale(n) / scale("+1") / scale("-1")       # from any thread: resize a pool
    - reload()                                   # from any thread: replace every worker, one at a time

    Methods that may be overridden, besides socketserver's (Prefork policy;
    a hook that raises is logged and the master carries on):

    - on_starting()                    # master, before the first fork
    - pre_fork(worker)                 # master, before each fork
    - post_fork(worker)                # worker, first thing after fork; raising fails the boot
    - worker_ready(worker)             # worker, before its first accept; raising fails the boot
    - worker_exit(worker, status, reason)   # master, after reaping; status as subprocess returncode
    - on_exit()                        # master, after the last worker is gone
    - pre_request(client_address)      # worker, before each request (a connection, for a classic handler)
    - post_request(client_address, outcome, duration)   # worker, after it: outcome "ok", "client_went_away",
                                       # "client_timeout" or "handler_error"; duration in seconds

    Class variables that may be overridden, besides socketserver's:

    - policy    # a prefork.Policy; None means "what the class's mixins do"
    - config    # a prefork.Config: timeouts, recycling, graceful stop

    Attributes for request handlers:

    - stopping      # True once a graceful stop began: finish up, take no more
    - heartbeat()   # tell the master a long-lived handler is alive, not hung
    """

    policy = None
    config = Config()
    stopping = False

    def __new__(cls, *args, policy=None, config=None, **kwargs):
        if policy is not None and not isinstance(policy, Policy):
            raise TypeError(f"policy must be a prefork policy such as prefork.Prefork(workers=4), got {policy!r}")
        chosen = policy or cls.policy or _policy_type(cls)()
        self = super().__new__(_class_for(cls, chosen))
        self.policy = chosen
        self.config = config or cls.config
        self._runner = None
        self._shutdown_requested = False
        self._is_shut_down = threading.Event()
        return self

    def __init__(self, *args, policy=None, config=None, **kwargs):
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval=0.5):
        """Serve until shutdown(): in this process, or as the master of a pool (Prefork)."""
        serve_together([self], poll_interval)

    def shutdown(self):
        """Stop serve_forever() and wait for it: a graceful stop for a pool. Call from another thread."""
        self._shutdown_requested = True
        runner = self._runner
        if runner is not None:
            runner.stop()
        self._is_shut_down.wait()

    def server_close(self):
        runner = self._runner
        if isinstance(runner, Master):        # closing under a running pool: stop it first, quickly
            runner.stop(graceful=False)
            self._is_shut_down.wait()
        super().server_close()

    def handle_error(self, request, client_address):
        """Log the exception with its traceback; the worker keeps serving.

        A client that resets, abandons or stalls its connection (past the
        client timeout) is routine, not a fault of the handler: one debug
        line, as gunicorn does.
        """
        if isinstance(sys.exc_info()[1], CLIENT_WENT_AWAY):
            log.debug("client %s went away: %s", client_address, sys.exc_info()[1] or "timed out")
            return
        log.error("exception while handling a request from %s", client_address, exc_info=True)

    def stats(self):
        """The pool's stats (see Master.stats); without a running pool, no workers."""
        runner = self._runner
        if isinstance(runner, Master):
            return runner.stats()
        return {"master": None, "workers": [], "restarts": {}, "boot_failures": 0, "zygotes": []}

    def scale(self, size):
        """Resize the running pool: 8 workers, or "+1", "-2". From any thread; returns at once."""
        self._command(commands.Scale.parse(size, why="scale()"))

    def reload(self):
        """Replace every worker of the running pool, one at a time (new code, same settings)."""
        self._command(commands.Reload(why="reload()"))

    def _command(self, command):
        runner = self._runner
        if runner is None:
            raise RuntimeError("no server is running: call serve_forever() first")
        runner.submit(command)

    def heartbeat(self):
        """In a pool worker, refresh the liveness tick; elsewhere nothing to do."""

    @classmethod
    def from_socket(cls, sock, RequestHandlerClass, owned=True, **kwargs):
        """A server on an already bound (and, for streams, listening) socket. owned: a Unix socket's file is
        ours to remove at close (not so for one systemd created and passed in)."""
        server = cls(sock.getsockname(), RequestHandlerClass, bind_and_activate=False, **kwargs)
        server.socket.close()
        server.socket = sock
        server.server_address = sock.getsockname()
        address = server.server_address
        if owned and sock.family == socket.AF_UNIX and address and address[0] not in ("\0", 0):   # not abstract
            server._unix_path = UnixPathOwner(address)
        return server


class TCPServer(BaseServer, socketserver.TCPServer):
    __doc__ = socketserver.TCPServer.__doc__

    #: A prefork.proxy_protocol.Allowed: each connection starts with a PROXY protocol header (HAProxy's
    #: send-proxy, nginx's proxy_protocol) from one of these peers, and client_address is the client it names.
    proxy_protocol = None

    #: An ssl.SSLContext (server side): connections speak TLS, and handlers get an ssl.SSLSocket as
    #: self.request (getpeercert() for mutual TLS). The handshake runs where the request is handled.
    tls = None

    def get_request(self):
        request, client_address = super().get_request()
        return (request, client_address) if self.proxy_protocol is None else proxied(self, request, client_address)

    def finish_request(self, request, client_address):
        if self.tls is None:
            return super().finish_request(request, client_address)
        request = tls_handshake(self, request, client_address)
        try:
            super().finish_request(request, client_address)
        finally:
            self.shutdown_request(request)        # the plain socket socketserver shuts next is detached

    def shutdown_request(self, request):
        if isinstance(request, ssl.SSLSocket):
            end_tls(request)
        super().shutdown_request(request)


class UDPServer(TCPServer, socketserver.UDPServer):
    __doc__ = socketserver.UDPServer.__doc__

    _replies = None

    def get_request(self):
        # MSG_DONTWAIT: pool workers share the socket, and one that loses the race for a
        # datagram gets EAGAIN instead of blocking. The socket itself stays blocking, as
        # socketserver's; handlers reply through a copy whose sends never wait (ReplySocket).
        data, client_addr = self.socket.recvfrom(self.max_packet_size, socket.MSG_DONTWAIT)
        replies = self._replies
        if replies is None or replies.owner != os.getpid():
            replies = self._replies = ReplySocket.for_socket(self.socket)
        return (data, replies), client_addr

    def server_close(self):
        super().server_close()
        if self._replies is not None:
            self._replies.close()


class _UnixPathMixIn:
    """Remove the socket file this server created, when it is closed."""

    _unix_path = None

    def server_bind(self):
        super().server_bind()
        if isinstance(self.server_address, str) and self.server_address[:1] not in ("", "\0"):
            self._unix_path = UnixPathOwner(self.server_address)

    def server_close(self):
        super().server_close()
        if self._unix_path is not None:
            self._unix_path.remove()


class UnixStreamServer(_UnixPathMixIn, TCPServer, socketserver.UnixStreamServer):
    pass


class UnixDatagramServer(_UnixPathMixIn, UDPServer, socketserver.UnixDatagramServer):
    pass


# -- mixins: thin ways of choosing a policy ----------------------------------

class _PolicyMixIn:
    """Refuse, at class creation, a ``policy`` the class could not honour.

    ``class S(prefork.ThreadingMixIn, http.server.HTTPServer): policy = ...``
    has no prefork server class in it, so nothing would ever read the policy.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        is_server = issubclass(cls, socketserver.BaseServer)
        if isinstance(cls.__dict__.get("policy"), Policy) and is_server and not issubclass(cls, BaseServer):
            raise TypeError(
                f"{cls.__name__} sets a policy, but no prefork server class is among its bases, so "
                f"nothing would read it: put one first, as in class {cls.__name__}(prefork.TCPServer, "
                f"{', '.join(b.__name__ for b in cls.__bases__ if not issubclass(b, _PolicyMixIn))})")


class ForkingMixIn(_PolicyMixIn, socketserver.ForkingMixIn):
    """socketserver.ForkingMixIn, choosing the ForkPerRequest policy. On Python 3.12+, a fork from a
    threaded process warns (DeprecationWarning): here once per server, not once per request."""

    policy = ForkPerRequest()
    _warned_about_threads = False

    def process_request(self, request, client_address):
        if not self._warned_about_threads:
            self._warned_about_threads = True
            return super().process_request(request, client_address)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().process_request(request, client_address)


class ThreadingMixIn(_PolicyMixIn, socketserver.ThreadingMixIn):
    """socketserver.ThreadingMixIn, choosing the ThreadPerRequest policy."""

    policy = ThreadPerRequest()


class InlineMixIn:
    """Handle requests in the process that accepted them (Serial, and Prefork's workers)."""

    policy = None
    process_request = socketserver.BaseServer.process_request


def _stdlib(name):
    """socketserver's class of that name, as an extra base: isinstance checks against it hold.
    (socketserver has no ForkingUnix* classes before Python 3.12.)"""
    cls = getattr(socketserver, name, None)
    return (cls,) if cls else ()


class ForkingUDPServer(ForkingMixIn, UDPServer, *_stdlib("ForkingUDPServer")):
    pass


class ForkingTCPServer(ForkingMixIn, TCPServer, *_stdlib("ForkingTCPServer")):
    pass


class ThreadingUDPServer(ThreadingMixIn, UDPServer, *_stdlib("ThreadingUDPServer")):
    pass


class ThreadingTCPServer(ThreadingMixIn, TCPServer, *_stdlib("ThreadingTCPServer")):
    pass


class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer, *_stdlib("ForkingUnixStreamServer")):
    pass


class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer, *_stdlib("ForkingUnixDatagramServer")):
    pass


class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer, *_stdlib("ThreadingUnixStreamServer")):
    pass


class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer, *_stdlib("ThreadingUnixDatagramServer")):
    pass


# -- choosing the class for a policy ------------------------------------------

_MIXIN_FOR = {ForkPerRequest: ForkingMixIn, ThreadPerRequest: ThreadingMixIn}


def _policy_type(cls):
    """The behaviour of cls's process_request: that of the first policy mixin in its MRO.

    A subclass may override process_request and call super(): the mixin
    behind it still decides whether requests fork, thread or run inline.
    """
    for klass in cls.__mro__:
        if klass is InlineMixIn:
            return Serial
        if klass is socketserver.ForkingMixIn:
            return ForkPerRequest
        if klass is socketserver.ThreadingMixIn:
            return ThreadPerRequest
    return Serial


@functools.lru_cache(maxsize=None)
def _composed(mixin, cls):
    name = mixin.__name__.replace("MixIn", "") + cls.__name__
    return type(name, (mixin, cls), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def _class_for(cls, policy):
    """cls, or cls with the mixin in front that gives it policy's process_request."""
    want = type(policy) if type(policy) in _MIXIN_FOR else Serial
    if _policy_type(cls) is want:
        return cls
    return _composed(_MIXIN_FOR.get(want, InlineMixIn), cls)


# -- serving ----------------------------------------------------------------------

def serve_together(servers, poll_interval=0.5, load_handler=None, reconfigure=None, services=(), credentials=None):
    """Serve several servers with the first one's policy until shutdown() is called on any.

    With a pooled policy this process becomes the master: it returns after a
    graceful stop (SIGTERM, shutdown()) or a quick one (SIGQUIT), raises
    KeyboardInterrupt after a Ctrl-C (SIGINT) once the pool has stopped, as
    socketserver's serve_forever() would, and raises HaltServer when no
    worker can boot.
    """
    first = servers[0]
    if first.policy.pooled:
        runner = Master(servers, load_handler=load_handler, poll_interval=poll_interval, reconfigure=reconfigure,
                        services=services, credentials=credentials)
    else:
        runner = RequestLoop(servers, poll_interval)
    for server in servers:
        server._is_shut_down.clear()
        server._runner = runner
        server.stopping = False
    try:
        if not any(server._shutdown_requested for server in servers):
            runner.run()
    finally:
        runner.close()
        for server in servers:
            server._runner = None
            server._shutdown_requested = False
            server._is_shut_down.set()
