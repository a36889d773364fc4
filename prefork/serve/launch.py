"""Runs in the `prefork serve` process: from resolved settings to running servers.

validate() checks everything that can be checked without binding a socket or
running the application's code; run_serve() binds, builds the servers and
serves them, and gives the master a reconfigure() that re-reads the settings
on SIGHUP.
"""

import functools
import logging
import os
import re
import socket
import sys
from typing import NamedTuple

from prefork import loader, logs, tls
from prefork.errors import AppLoadError, BindError, ConfigError, Exit, HaltServer, report
from prefork.listeners import describe_socket, open_listener, parse_bind, repeated_bind, socket_kind, take_inherited
from prefork.policies import PER_CPU, POLICIES_BY_NAME, Adaptive, Prefork
from prefork.pool.reloads import Reconfiguration
from prefork.proxy_protocol import Allowed
from prefork.serve import privileges, systemd, upgrade
from prefork.serve.control_server import ControlServer, open_control_socket
from prefork.serve.metrics_server import MetricsServer, open_metrics_socket
from prefork.serve.pidfile import PidFile
from prefork.serve.settings import SETTINGS
from prefork.servers import TCPServer, UDPServer, UnixDatagramServer, UnixStreamServer, serve_together
from prefork.supervision import Config

log = logging.getLogger("prefork")

HOOK_NAMES = ("on_starting", "pre_fork", "post_fork", "worker_ready", "worker_exit", "on_exit", "pre_request",
              "post_request")
SERVER_CLASSES = {"tcp": TCPServer, "udp": UDPServer, "unix": UnixStreamServer, "unix-dgram": UnixDatagramServer}
WSGI_SETTINGS = ("root_path", "limit_request_line", "limit_request_fields", "limit_request_field_size")
ADAPTIVE_SETTINGS = ("min_workers", "max_workers", "min_spare", "max_spare", "scale_down_after")
POLICY_SETTINGS = {"workers": ("prefork",), "threads": ("prefork", "adaptive"),
                   **dict.fromkeys(ADAPTIVE_SETTINGS, ("adaptive",))}


class Launch(NamedTuple):
    """Validated settings, ready to bind and serve."""

    options: object           #: serve.settings.ServeOptions
    config: object            #: supervision.Config
    policy: object
    binds: list
    spec: str                 #: the handler as module:Class
    proxy: object = None      #: (proxy_protocol.Allowed, the binds whose clients send a PROXY header, or None: all)
    tls: object = None        #: (ssl.SSLContext, the binds that speak TLS, or None: all)


def validate(resolved):
    """Check the settings as far as possible without side effects; a Launch, or a PreforkError."""
    options = resolved.options()
    spec = options.handler if options.wsgi else loader.BUILTIN_HANDLERS.get(options.handler, options.handler)
    _check_wsgi(resolved, options)
    config = resolved.config()
    if not config.name:
        config = config.replace(name=options.handler)
    policy = _policy(resolved, options)
    if not policy.pooled:
        # These serve in the master's own process: there is no worker to drop privileges in, and
        # the control socket and upgrades are a pool master's.
        for name in ("user", "group", "control", "metrics"):
            if getattr(options, name):
                raise ConfigError(f"{resolved.label(name)} needs a pool (--policy prefork or adaptive), "
                                  f"not --policy {options.policy}, which serves in the master's own process")
    binds = [parse_bind(text) for text in options.bind]
    repeated = repeated_bind(binds)
    if repeated:                # refused before anything is bound, not "address already in use" on the second
        first, again = repeated
        raise ConfigError(f"{resolved.label('bind')} {first.text} is given twice" if first.text == again.text else
                          f"{resolved.label('bind')} {first.text} and {again.text} are the same address, given twice")
    if options.wsgi:
        from prefork import wsgi        # here: only --wsgi needs httptools (the prefork[wsgi] extra)
        wsgi.split_app_spec(spec)
        if any(bind.kind in ("udp", "unix-dgram") for bind in binds):
            raise ConfigError(f"--wsgi serves HTTP on stream sockets; {resolved.label('bind')} names a datagram socket")
    else:
        loader.split_spec(spec)
    return Launch(options, config, policy, binds, spec, _proxy(resolved, options, binds),
                  _tls(resolved, options, binds))


def _proxy(resolved, options, binds):
    """What --proxy-protocol and --proxy-allow ask for: (Allowed, binds or None for every stream listener)."""
    if not options.proxy_protocol:
        if resolved.sources["proxy_allow"] != "default":
            raise ConfigError(f"{resolved.label('proxy_allow')} applies with --proxy-protocol only")
        return None
    try:
        allowed = Allowed(options.proxy_allow)
    except ValueError as exc:
        raise ConfigError(f"{resolved.label('proxy_allow')}: {exc}") from None
    return allowed, _chosen_binds(resolved, "proxy_protocol", options.proxy_protocol, binds,
                                  "the PROXY protocol is for stream listeners only (a datagram's reply would "
                                  "go to the client, not back through the proxy)")


def _tls(resolved, options, binds):
    """What --certfile and the TLS settings ask for: (SSLContext, binds or None for every stream listener)."""
    if not options.certfile:
        for name in ("keyfile", "keyfile_password_file", "ca_certs", "cert_reqs", "tls"):
            if resolved.sources[name] != "default":
                raise ConfigError(f"{resolved.label(name)} applies with --certfile only")
        return None
    if options.cert_reqs != "none" and not options.ca_certs:
        raise ConfigError(f"{resolved.label('cert_reqs')} {options.cert_reqs} needs {resolved.label('ca_certs')}: "
                          f"the CAs that client certificates must chain to")
    if options.ca_certs and options.cert_reqs == "none":
        raise ConfigError(f"{resolved.label('ca_certs')} applies with {resolved.label('cert_reqs')} optional or "
                          f"required only")
    try:
        context = tls.server_context(options.certfile, options.keyfile, options.ca_certs, options.cert_reqs,
                                     options.keyfile_password_file)
    except tls.TLSError as exc:
        raise ConfigError(f"{resolved.label(exc.setting)} {exc}") from None
    return context, _chosen_binds(resolved, "tls", options.tls, binds,
                                  "TLS is for stream listeners only (DTLS is not served)")


def _chosen_binds(resolved, name, value, binds, not_stream):
    """The binds a setting's value names (comma-separated, as given to -b), or None for * (all of them)."""
    names = [text.strip() for text in value.split(",") if text.strip()]
    if "*" in names:
        return None
    chosen = []
    for text in names:
        try:
            bind = next(b for b in binds if b.text == text or repeated_bind([b, parse_bind(text)]))
        except (StopIteration, BindError):
            raise ConfigError(f"{resolved.label(name)} {text} names no -b/--bind (* names them all, "
                              f"systemd's sockets too)") from None
        if not bind.stream:
            raise ConfigError(f"{resolved.label(name)} {text}: {not_stream}")
        chosen.append(bind)
    return chosen


def _check_wsgi(resolved, options):
    """The WSGI settings without --wsgi are an error, not ignored."""
    if options.root_path and not options.root_path.startswith("/"):
        raise ConfigError(f"{resolved.label('root_path')} must start with '/', got {options.root_path!r}")
    if not options.wsgi:
        for name in WSGI_SETTINGS:
            if resolved.sources[name] != "default":
                raise ConfigError(f"{resolved.label(name)} applies to WSGI apps only: add --wsgi")


def _policy(resolved, options):
    """The policy the settings describe; a setting given for another policy is an error, not ignored."""
    for name, policies in POLICY_SETTINGS.items():
        if options.policy not in policies and resolved.sources[name] != "default":
            hint = " (an adaptive pool takes --min-workers and --max-workers)" if options.policy == "adaptive" else ""
            raise ConfigError(f"{resolved.label(name)} applies to --policy {' or '.join(policies)} only, "
                              f"not --policy {options.policy}{hint}")
    if options.policy == "prefork":
        return Prefork(workers=options.workers or PER_CPU, threads=options.threads)   # the master says why
    if options.policy != "adaptive":
        return POLICIES_BY_NAME[options.policy]()
    given = {name: getattr(options, name) for name in ADAPTIVE_SETTINGS if getattr(options, name) is not None}
    try:
        return Adaptive(threads=options.threads, **given)
    except ConfigError as exc:          # a combination: name every setting as the user gave it
        names = "|".join(ADAPTIVE_SETTINGS + ("threads",))
        raise ConfigError(re.sub(rf"\b({names})\b", lambda m: resolved.label(m.group(1)), str(exc))) from None


def run_serve(resolved, re_resolve):
    """Serve until stopped; the exit status. re_resolve() reads the settings again (for SIGHUP)."""
    options = resolved.options()
    if options.umask is not None:
        os.umask(options.umask)
    try:
        if options.wsgi and resolved.sources["handler"] == "default":
            raise ConfigError("--wsgi needs the app to serve: prefork serve --wsgi MODULE:APP (or MODULE:FACTORY())")
        launch = validate(resolved)
        credentials = privileges.resolve(options.user, options.group)
        socket_owner = privileges.owner_of(options.socket_owner) if options.socket_owner else None
    except (ConfigError, AppLoadError, BindError) as exc:
        return report(exc, Exit.USAGE)
    try:
        logs.configure(options.log_level, options.log_file, credentials and (credentials.uid, credentials.gid))
    except OSError as exc:
        return report(f"cannot open --log-file {options.log_file}: {exc.strerror}", Exit.ERROR)
    access_log = launch.config.access_log
    if access_log and access_log != "-":        # the master opens it; a problem is said here, before binding
        try:
            logs.open_log(access_log, credentials and (credentials.uid, credentials.gid)).close()
        except OSError as exc:
            return report(f"cannot open --access-log {access_log}: {exc.strerror}", Exit.ERROR)
    if os.getcwd() not in sys.path:        # like gunicorn: serve modules from where you stand
        sys.path.insert(0, os.getcwd())
    try:
        handler, load_handler = _handler(launch)
        hooks = _hooks(options.hooks)
    except (ConfigError, AppLoadError) as exc:
        return report(exc, Exit.USAGE)
    inherited = upgrade.inherited()
    servers, pidfile, services = [], None, []
    try:
        # systemd's sockets: passed to us, or to the first master, whose successors pass them on as such.
        activated = systemd.listen_fds() + inherited.activated
        servers = _servers(launch, handler, inherited.listeners, activated, resolved.sources["bind"] == "default")
        _set_socket_files(servers, options.socket_mode, socket_owner)
        if options.pid:
            pidfile = PidFile(options.pid)
            pidfile.create()
        services = _services(launch, servers, activated, inherited, pidfile)
    except (BindError, OSError) as exc:
        for service in services:
            service.close()
        _close(servers, pidfile)
        return report(exc, Exit.ERROR)
    if hooks is not None:
        for name in HOOK_NAMES:
            if hasattr(hooks, name):
                setattr(servers[0], name, functools.partial(getattr(hooks, name), servers[0]))
    try:
        serve_together(servers, load_handler=load_handler, services=services, credentials=credentials,
                       reconfigure=functools.partial(_reconfigure, launch, re_resolve))
    except HaltServer as exc:
        return report(exc, exc.exit_code)
    except KeyboardInterrupt:
        pass
    finally:
        _close(servers, pidfile)             # the master closed its services
    return Exit.OK


def _servers(launch, handler, inherited, activated, binds_are_default):
    """Servers on the sockets systemd or an old master passed us, and on fresh binds for the rest."""
    servers, kwargs = [], {"policy": launch.policy, "config": launch.config}
    allowed, proxied_binds = launch.proxy or (None, ())
    context, tls_binds = launch.tls or (None, ())
    for sock, _name in activated:
        servers.append(SERVER_CLASSES[socket_kind(sock)].from_socket(sock, handler, owned=False, **kwargs))
        if sock.type == socket.SOCK_STREAM:
            servers[-1].proxy_protocol = allowed if proxied_binds is None else None
            servers[-1].tls = context if tls_binds is None else None
    binds = [] if activated and binds_are_default else launch.binds
    for bind in binds:
        sock = take_inherited(bind, inherited)
        if sock is None:
            sock = open_listener(bind, launch.options.backlog)
        servers.append(SERVER_CLASSES[bind.kind].from_socket(sock, handler, **kwargs))
        if bind.stream:
            servers[-1].proxy_protocol = allowed if proxied_binds is None or bind in proxied_binds else None
            servers[-1].tls = context if tls_binds is None or bind in tls_binds else None
    for sock in inherited:                       # an old master's socket this one no longer wants
        log.warning("upgrade: not serving %s any more (not among the binds)", describe_socket(sock))
        sock.close()
    if not servers:
        raise BindError("nothing to serve: no -b/--bind, and no socket from systemd (LISTEN_FDS)")
    secure = [describe_socket(server.socket) for server in servers if getattr(server, "tls", None) is not None]
    if secure:
        log.info("TLS on %s: certificate %s, client certificates %s", ", ".join(secure), launch.options.certfile,
                 launch.options.cert_reqs)
    return servers


def _set_socket_files(servers, mode, owner):
    for server in servers:
        path = getattr(getattr(server, "_unix_path", None), "path", None)
        if path is None:
            continue
        if mode is not None:
            os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)


def _services(launch, servers, activated, inherited, pidfile):
    """What the master looks after beside its workers, for `prefork serve`."""
    services = []
    control_socket, ready_fd = inherited.control, inherited.ready
    options = launch.options
    control = None
    if control_socket is not None:           # an old master's: ours to answer once our pool is ready
        control_socket.setblocking(False)
        control = ControlServer(control_socket, active=ready_fd is None)
    elif options.control:
        control = ControlServer(open_control_socket(options.control))
    if control is not None:
        services.append(control)
    metrics = None
    if inherited.metrics is not None:         # an old master's, as the control socket
        inherited.metrics.setblocking(False)
        metrics = MetricsServer(inherited.metrics, active=ready_fd is None)
    elif options.metrics:
        metrics = MetricsServer(open_metrics_socket(options.metrics))
    if metrics is not None:
        services.append(metrics)
    notifier = systemd.Notifier()
    if notifier.enabled:
        services.append(notifier)
    if launch.policy.pooled:
        services.append(upgrade.Upgrader(servers, control, pidfile, activated=activated, metrics=metrics))
    if ready_fd is not None:
        services.append(upgrade.Successor(ready_fd, servers, control, inherited.predecessor, metrics=metrics))
    return services


def _handler(launch):
    """The handler class to build servers with, and the loader a pool runs (in each worker, or once in
    a zygote with --preload: the master never imports the handler). In-process policies import it here."""
    load_handler = _loader(launch)
    return (load_handler(), None) if not launch.policy.pooled else (None, load_handler)


def _loader(launch):
    """What loads the handler class: loader.load_handler, or for --wsgi the app wrapped in a WSGI handler.
    Checks first that the module's top package exists, without running its code."""
    options = launch.options
    if not options.wsgi:
        loader.check_findable(launch.spec)
        return functools.partial(loader.load_handler, launch.spec)
    from prefork import wsgi
    wsgi.check_findable(launch.spec)
    limits = wsgi.Limits(options.limit_request_line, options.limit_request_fields, options.limit_request_field_size)
    return wsgi.loader_for(launch.spec, options.root_path, limits, getattr(launch.policy, "threads", 1))


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
    load_handler = _loader(new)
    old_values, new_values = {**vars(launch.options), **vars(launch.config)}, {**vars(new.options), **vars(new.config)}
    restart = [item.key for item in SETTINGS
               if item.restart and old_values.get(item.name) != new_values.get(item.name)]
    if (launch.tls is None) != (new.tls is None):     # TLS turned on or off: the listeners change
        restart.append("certfile")
    elif new.tls:
        log.info("reload: TLS certificate %s read again; the new workers serve it", new.options.certfile)
    logging.getLogger().setLevel(new.options.log_level.upper())
    kept = {item.name: launch.config.__dict__[item.name] for item in SETTINGS if item.restart and item.owner is Config}
    return Reconfiguration(config=new.config.replace(**kept),
                           workers=new.policy.workers if _static(launch.policy) and _static(new.policy) else None,
                           load_handler=load_handler, restart=tuple(restart),
                           tls=new.tls[0] if new.tls and launch.tls else None)


def _static(policy):
    """A policy whose size a reload may change (an adaptive pool's settings need a restart)."""
    return isinstance(policy, Prefork)


def _close(servers, pidfile):
    for server in servers:
        server.server_close()
    if pidfile is not None:
        pidfile.remove()
