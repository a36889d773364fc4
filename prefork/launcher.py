"""From resolved settings to running servers: the body of `prefork serve`.

validate() checks everything that can be checked without binding a socket or
running the application's code; run_serve() binds, builds the servers and
serves them, and gives the master a reconfigure() that re-reads the settings
on SIGHUP.
"""

import functools
import logging
import os
import sys
from typing import NamedTuple

from . import loader
from .errors import AppLoadError, BindError, ConfigError, Exit, HaltServer
from .listeners import open_listener, parse_bind
from .master import Reconfiguration
from .policies import POLICIES_BY_NAME, Prefork, cpu_count
from .servers import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer, serve_together
from .config import Config
from .settings import SETTINGS

log = logging.getLogger("prefork")

HOOK_NAMES = ("on_starting", "pre_fork", "post_fork", "worker_ready", "worker_exit", "on_exit")
SERVER_CLASSES = {"tcp": TCPServer, "udp": UDPServer, "unix": UnixStreamServer, "unix-dgram": UnixDatagramServer}
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


class Launch(NamedTuple):
    """Validated settings, ready to bind and serve."""

    options: object           #: settings.ServeOptions
    config: object            #: config.Config
    policy: object
    binds: list
    spec: str                 #: the handler as module:Class


def validate(resolved):
    """Check the settings as far as possible without side effects; a Launch, or a PreforkError."""
    options = resolved.options()
    spec = loader.BUILTIN_HANDLERS.get(options.handler, options.handler)
    config = resolved.config()
    if not config.name:
        config = config.replace(name=options.handler)
    if options.policy != "prefork":
        for name in ("workers", "threads"):
            if resolved.sources[name] != "default":
                raise ConfigError(f"{resolved.label(name)} applies to --policy prefork only, "
                                  f"not --policy {options.policy}")
        policy = POLICIES_BY_NAME[options.policy]()
    else:
        policy = Prefork(workers=options.workers or cpu_count(), threads=options.threads)
    binds = [parse_bind(text) for text in options.bind]
    loader.split_spec(spec)
    return Launch(options, config, policy, binds, spec)


def run_serve(resolved, re_resolve):
    """Serve until stopped; the exit status. re_resolve() reads the settings again (for SIGHUP)."""
    options = resolved.options()
    logging.basicConfig(level=options.log_level.upper(), format=LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S %z",
                        stream=sys.stderr)
    if os.getcwd() not in sys.path:        # like gunicorn: serve modules from where you stand
        sys.path.insert(0, os.getcwd())
    try:
        launch = validate(resolved)
        handler, load_handler = _handler(launch)
        hooks = _hooks(options.hooks)
    except (ConfigError, AppLoadError, BindError) as exc:
        return _fail(exc, Exit.USAGE)
    servers = []
    try:
        for bind in launch.binds:
            sock = open_listener(bind, options.backlog)
            servers.append(SERVER_CLASSES[bind.kind].from_socket(sock, handler, policy=launch.policy,
                                                                 config=launch.config))
    except BindError as exc:
        _close(servers)
        return _fail(exc, Exit.ERROR)
    if hooks is not None:
        for name in HOOK_NAMES:
            if hasattr(hooks, name):
                setattr(servers[0], name, functools.partial(getattr(hooks, name), servers[0]))
    try:
        serve_together(servers, load_handler=load_handler,
                       reconfigure=functools.partial(_reconfigure, launch, re_resolve))
    except HaltServer as exc:
        return _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        pass
    finally:
        _close(servers)
    return Exit.OK


def _handler(launch):
    """The handler class to build servers with, and the loader a pool runs (in each worker, or once in
    a zygote with --preload: the master never imports the handler). In-process policies import it here."""
    if not launch.policy.pooled:
        return loader.load_handler(launch.spec), None
    loader.check_findable(launch.spec)
    return None, functools.partial(loader.load_handler, launch.spec)


def _hooks(module_name):
    if not module_name:
        return None
    hooks = loader.load_module(module_name, "hooks module")
    if not any(hasattr(hooks, name) for name in HOOK_NAMES):
        log.warning("--hooks module %r defines none of %s; nothing will be called", module_name,
                    ", ".join(HOOK_NAMES))
    return hooks


def _reconfigure(launch, re_resolve):
    """SIGHUP: the settings read again, as a Reconfiguration for the master; raises if they are wrong."""
    resolved = re_resolve()
    new = validate(resolved)
    loader.check_findable(new.spec)
    old_values, new_values = {**vars(launch.options), **vars(launch.config)}, {**vars(new.options), **vars(new.config)}
    restart = [item.key for item in SETTINGS
               if item.restart and old_values.get(item.name) != new_values.get(item.name)]
    load_handler = functools.partial(loader.load_handler, new.spec)
    logging.getLogger().setLevel(new.options.log_level.upper())
    kept = {item.name: launch.config.__dict__[item.name] for item in SETTINGS if item.restart and item.owner is Config}
    return Reconfiguration(config=new.config.replace(**kept),
                           workers=new.policy.workers if new.policy.pooled else None,
                           load_handler=load_handler, restart=tuple(restart))


def _fail(exc, code):
    print(f"prefork: error: {exc}", file=sys.stderr)
    return code


def _close(servers):
    for server in servers:
        server.server_close()
