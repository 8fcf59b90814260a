"""The `blockyard` command: `blockyard serve` runs the volume service."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

from blockyard import backends as drivers
from blockyard import config as configuration
from blockyard.errors import ConfigError
from blockyard.targets import check_options as check_target_options


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, minus re-raising SIGTERM/SIGINT after a graceful shutdown: a
        requested stop that completed is a success (exit 0), not death by signal."""

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

    return Server


def _serve(args: argparse.Namespace) -> int:
    try:
        cfg = configuration.load(args.config, state_dir=args.state_dir, listen=args.listen)
        for bc in cfg.backends:  # driver names and options, before anything starts
            drivers.load(bc.name, bc.driver, bc.options)
        for protocol in {bc.target for bc in cfg.backends} | set(cfg.targets):
            check_target_options(protocol, cfg.targets.get(protocol, {}))
    except ConfigError as exc:
        print(f"blockyard: bad configuration: {exc}", file=sys.stderr)
        return 2
    from blockyard.api.app import create_app

    sock = _bind(cfg.listen_host, cfg.listen_port)
    if sock is None:
        return 1
    return _run(create_app(cfg), sock, args,
                f"serving the Cinder v3 API on http://{cfg.listen_host}:%d/v3")


def _compute(args: argparse.Namespace) -> int:
    from blockyard.compute import config as compute_config

    try:
        cfg = compute_config.load(args.config, state_dir=args.state_dir, listen=args.listen)
    except ConfigError as exc:
        print(f"blockyard: bad configuration: {exc}", file=sys.stderr)
        return 2
    from blockyard.compute.api import create_app

    sock = _bind(cfg.listen_host, cfg.listen_port)
    if sock is None:
        return 1
    return _run(create_app(cfg), sock, args,
                f"serving the compute API on http://{cfg.listen_host}:%d/v2.1")


def _stop_exports(args: argparse.Namespace) -> int:
    """Stop the tgtd and qemu-nbd processes a state dir's service left running for its
    attached volumes (they outlive `blockyard serve` on purpose); their consumers lose them."""
    from pathlib import Path

    from blockyard.targets import teardown

    try:
        state_dir = configuration.load(args.config, state_dir=args.state_dir).state_dir
    except ConfigError as exc:
        print(f"blockyard: bad configuration: {exc}", file=sys.stderr)
        return 2
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
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _run(app: Any, sock: socket.socket, args: argparse.Namespace, banner: str) -> int:
    import uvicorn

    server = _server_class()(uvicorn.Config(
        app, log_level=args.log_level, access_log=args.access_log, lifespan="on",
        timeout_graceful_shutdown=10,
    ))
    host, port = sock.getsockname()[:2]
    logging.getLogger("blockyard").info("serving on %s:%s", host, port)
    print(f"blockyard: {banner % port}", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0 if server.started else 1


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
