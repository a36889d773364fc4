"""prefork: a prefork server framework, and a drop-in for socketserver. Runs in the user's program.

    import prefork as socketserver      # existing code keeps working

    with prefork.TCPServer(("127.0.0.1", 9000), Handler, policy=prefork.Prefork(workers=4)) as server:
        server.serve_forever()          # this process becomes the master of 4 workers

socketserver's public names come first, with socketserver's behaviour; the
request handler classes *are* socketserver's. Then the pool policies, the
parking handlers (one request at a time, parked in between), the settings
and the errors.
"""

from socketserver import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler

from prefork.errors import AppLoadError, BindError, ConfigError, HaltServer, PreforkError
from prefork.parking import (
    ParkingHTTPMixIn,
    ParkingHTTPRequestHandler,
    ParkingLineHandler,
    ParkingRequestHandler,
)
from prefork.policies import Adaptive, ForkPerRequest, Policy, Prefork, Serial, ThreadPerRequest
from prefork.pool.master import Master
from prefork.supervision import Config
from prefork.servers import (
    BaseServer,
    ForkingMixIn,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
    TCPServer,
    ThreadingMixIn,
    ThreadingTCPServer,
    ThreadingUDPServer,
    ThreadingUnixDatagramServer,
    ThreadingUnixStreamServer,
    UDPServer,
    UnixDatagramServer,
    UnixStreamServer,
    serve_together,
)

__version__ = "0.1.0"

__all__ = [
    # socketserver's names
    "BaseServer", "TCPServer", "UDPServer", "UnixStreamServer", "UnixDatagramServer",
    "ForkingMixIn", "ThreadingMixIn",
    "ForkingTCPServer", "ForkingUDPServer", "ForkingUnixStreamServer", "ForkingUnixDatagramServer",
    "ThreadingTCPServer", "ThreadingUDPServer", "ThreadingUnixStreamServer", "ThreadingUnixDatagramServer",
    "BaseRequestHandler", "StreamRequestHandler", "DatagramRequestHandler",
    # pool policies
    "Policy", "Serial", "ForkPerRequest", "ThreadPerRequest", "Prefork", "Adaptive",
    # parking handlers
    "ParkingRequestHandler", "ParkingLineHandler", "ParkingHTTPMixIn", "ParkingHTTPRequestHandler",
    # running and configuring
    "Config", "Master", "serve_together",
    # errors
    "PreforkError", "ConfigError", "BindError", "AppLoadError", "HaltServer",
]
