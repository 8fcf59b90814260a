"""The `blockyard` command: `blockyard serve` runs the volume service."""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from blockyard import config as configuration
from blockyard.errors import BlockyardError, ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

log = logging.getLogger("blockyard")


def _server_class(banner: str) -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus re-raising SIGTERM/SIGINT after a graceful shutdown (a
        requested stop that completed is a success, exit 0, not death by signal), and saying
        `banner` once it listens."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit)
                        for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                print(f"blockyard: {banner}", file=sys.stderr, flush=True)

    return Server


def _bad_config(exc: ConfigError) -> int:
    print(f"blockyard: bad configuration: {exc}", file=sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    try:
        cfg = configuration.load(args.config, state_dir=args.state_dir, listen=args.listen)
        from blockyard import backends  # only now: a refused file is said fast
        from blockyard.targets.local import LocalTarget

        for bc in cfg.backends:  # what the driver itself checks, before anything starts
            backends.load(bc.name, bc.driver, bc.options, LocalTarget())  # (no daemon yet)
        if not _auth_allows_listening(cfg.auth, cfg.listen_host, args):
            return 2
        from blockyard.api.app import create_app

        app = create_app(cfg)
    except ConfigError as exc:
        return _bad_config(exc)
    sock = _bind(cfg.listen_host, cfg.listen_port)
    if sock is None:
        return 1
    return _run(app, sock, args, "serving the Cinder v3 API on http://{}:{}/v3")


def _compute(args: argparse.Namespace) -> int:
    from blockyard.compute import config as compute_config

    try:
        cfg = compute_config.load(args.config, state_dir=args.state_dir, listen=args.listen)
        compute_config.check_files(cfg)
        auth = getattr(cfg, "auth", configuration.AuthConfig())
        if not _auth_allows_listening(auth, cfg.listen_host, args):
            return 2
        from blockyard.compute.api import create_app

        app = create_app(cfg)
    except ConfigError as exc:
        return _bad_config(exc)
    sock = _bind(cfg.listen_host, cfg.listen_port)
    if sock is None:
        return 1
    return _run(app, sock, args, "serving the compute API on http://{}:{}/v2.1")


#: the flag that lets noauth listen beyond loopback; its name says what it does
INSECURE_FLAG = "--insecure-noauth-on-network"


def _is_loopback(host: str) -> bool:
    """Does `host` (a name or an address) mean only this machine?"""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


def _auth_allows_listening(auth: configuration.AuthConfig, host: str,
                           args: argparse.Namespace) -> bool:
    """noauth makes every caller an admin: it may listen on loopback only, unless the
    operator says, with a flag named for it, that this is what they want."""
    if auth.keystone or _is_loopback(host):
        return True
    if args.insecure_noauth_on_network:
        log.warning("listening on %s without authentication ([auth] strategy = \"noauth\"): "
                    "anyone who can reach it is an admin", host)
        return True
    print(f"blockyard: refusing to listen on {host} without authentication: "
          f"[auth] strategy is \"noauth\", which makes every caller an admin. Use "
          f"[auth] strategy = \"keystone\", a loopback address, or {INSECURE_FLAG} "
          f"if this network is trusted.", file=sys.stderr)
    return False


def _stop_exports(args: argparse.Namespace) -> int:
    """Stop the tgtd and qemu-nbd processes a state dir's service left running for its
    attached volumes (they outlive `blockyard serve` on purpose); their consumers lose them."""
    from pathlib import Path

    from blockyard.targets import teardown

    try:
        state_dir = configuration.load(args.config, state_dir=args.state_dir).state_dir
    except ConfigError as exc:
        return _bad_config(exc)
    teardown(Path(state_dir))
    return 0


def _bind(host: str, port: int) -> socket.socket | None:
    """Bind first, so a taken port is one clear line and not a traceback from the server."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            print(f"blockyard: {host}:{port} is already in use", file=sys.stderr)
        else:
            print(f"blockyard: cannot listen on {host}:{port}: {exc.strerror}",
                  file=sys.stderr)
        return None
    sock.listen(2048)  # taken now, so a target daemon started later cannot take it too
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _run(app: Starlette, sock: socket.socket, args: argparse.Namespace, banner: str) -> int:
    """Start the app (its lifespan: database, targets, backends), then serve on `sock`; stop
    the app after serving. A failure to start is one line on stderr, never a traceback: exit 2
    for a ConfigError only start-up could see, 1 for anything else."""
    import asyncio

    import uvicorn

    host, port = sock.getsockname()[:2]
    where = f"[{host}]" if ":" in host else host
    server = _server_class(banner.format(where, port))(uvicorn.Config(
        app, log_level=args.log_level, access_log=args.access_log, lifespan="off",
        timeout_graceful_shutdown=10,
    ))
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner, \
            _signals_held() as stop_requested:
        return runner.run(_lifetime(app, server, sock, stop_requested))


async def _lifetime(app: Starlette, server: Any, sock: socket.socket,
                    stop_requested: Callable[[], bool]) -> int:
    starting = app.router.lifespan_context(app)
    try:
        await starting.__aenter__()
    except ConfigError as exc:
        return _bad_config(exc)
    except Exception as exc:  # noqa: BLE001 - one line, whatever failed; details at debug level
        logging.getLogger("blockyard").debug("start-up failed", exc_info=exc)
        reason = str(exc) if isinstance(exc, BlockyardError) else f"{type(exc).__name__}: {exc}"
        print(f"blockyard: cannot start: {reason}", file=sys.stderr)
        return 1
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_exit(starting)
        if stop_requested():  # SIGTERM/SIGINT while starting: stop without serving
            return 0
        await server.serve(sockets=[sock])
    return 0 if server.started else 1


@contextlib.contextmanager
def _signals_held() -> Iterator[Callable[[], bool]]:
    """SIGTERM/SIGINT while the app starts or stops are remembered, not fatal: a start-up
    is finished (or rolled back) before the process exits. uvicorn handles them while
    serving."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockyard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the volume service (Cinder v3 API)")
    serve.add_argument("--config", help="TOML configuration file (default: embedded default)")
    serve.add_argument("--state-dir", help="where the database and volumes live (./var)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (127.0.0.1:8776)")
    compute = sub.add_parser("compute", help="run the compute agent (Nova-compatible API)")
    compute.add_argument("--config", help="TOML configuration file (default: built-in)")
    compute.add_argument("--state-dir", help="where the agent keeps its state (./var/compute)")
    compute.add_argument("--listen", help="HOST:PORT to listen on (127.0.0.1:8774)")
    stop_exports = sub.add_parser(
        "stop-exports", help="stop the export daemons (tgtd, qemu-nbd) a stopped service left "
                             "running for its attached volumes")
    stop_exports.add_argument("--config", help="TOML configuration file (for state_dir)")
    stop_exports.add_argument("--state-dir", help="the service's state dir (./var)")
    from blockyard import migrate_cli

    migrate_cli.add_parser(sub)
    for p in (serve, compute):
        p.add_argument("--log-level", default="warning",
                       choices=["critical", "error", "warning", "info", "debug"])
        p.add_argument("--access-log", action="store_true", help="log every request")
        p.add_argument(INSECURE_FLAG, action="store_true",
                       help="allow [auth] strategy \"noauth\" (every caller an admin) on a "
                            "non-loopback address")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args)
    if args.command == "compute":
        return _compute(args)
    if args.command == "stop-exports":
        return _stop_exports(args)
    if args.command == "migrate":
        return migrate_cli.run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
