"""Configuration: a TOML file, or the embedded default (one sparse-file backend).

Example::

    listen = "127.0.0.1:8776"
    state_dir = "/var/lib/blockyard"
    database_url = "postgresql+psycopg://blockyard@/blockyard"   # default: SQLite in state_dir
    host = "storage1"                                           # default: this machine's name

    [quota]               # defaults for every project
    volumes = 10
    gigabytes = 1000

    [backends.fast]
    driver = "file"
    path = "/srv/volumes"
    availability_zone = "nova"
    volume_backend_name = "fast"
    target = "iscsi"          # local (default), iscsi (tgt), nbd (qemu-nbd); rbd for driver "rbd"

    [targets.iscsi]           # options of the export target, see blockyard.targets
    portal = "127.0.0.1:3260"
    control_port = 3261

    [compute]                 # where to send Nova's volume-extended events (optional)
    url = "http://127.0.0.1:8774/v2.1"    # the compute API base; without it none are sent
    timeout = 10                          # seconds per request

Every error names the key it is about (`ConfigError.key`).
"""

from __future__ import annotations

import math
import socket
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockyard.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8776"
DEFAULT_QUOTAS: dict[str, int] = {
    "volumes": 10,
    "snapshots": 10,
    "gigabytes": 1000,
    "backups": 10,
    "backup_gigabytes": 1000,
    "groups": 10,
    "per_volume_gigabytes": -1,
}
_TOP_KEYS = {"listen", "state_dir", "database_url", "host", "quota", "backends", "targets",
             "default_volume_type", "default_group_type", "max_volume_size_gb", "compute"}
_COMPUTE_KEYS = {"url", "timeout"}
#: seconds a request to the compute API may take, by default
DEFAULT_COMPUTE_TIMEOUT = 10.0
_BACKEND_KEYS = {"driver", "availability_zone", "volume_backend_name", "workers", "target"}
#: export protocols a backend may name in `target`
TARGET_PROTOCOLS = ("local", "iscsi", "nbd", "rbd")


@dataclass(frozen=True)
class BackendConfig:
    name: str
    driver: str
    availability_zone: str = "nova"
    volume_backend_name: str = ""
    #: worker threads running this backend's durable tasks
    workers: int = 4
    #: how volumes are exported: "local", "iscsi" (tgt), "nbd" (qemu-nbd), or "rbd" (the rbd
    #: driver's native connections: no export work)
    target: str = "local"
    #: everything else in the table goes to the driver
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ComputeEndpoint:
    """[compute]: the compute API the volume service tells about attached volumes that grew
    (`blockyard.service.compute_events`; not the compute agent's own configuration)."""

    #: the compute API base, e.g. "http://127.0.0.1:8774/v2.1"; None: send no events
    url: str | None = None
    #: seconds one request may take
    timeout: float = DEFAULT_COMPUTE_TIMEOUT


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    state_dir: Path
    database_url: str
    host: str
    backends: tuple[BackendConfig, ...]
    quotas: dict[str, int]
    default_volume_type: str = "__DEFAULT__"
    #: the group type GET /group_types/default names (Cinder has none unless configured)
    default_group_type: str | None = None
    max_volume_size_gb: int = 16384
    #: options of each export target, by protocol ([targets.iscsi], [targets.nbd])
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [compute]: where volume-extended events go
    compute: ComputeEndpoint = field(default_factory=ComputeEndpoint)


def parse_listen(value: Any, key: str = "listen") -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(key, f"must be HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(key, f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535 or not host:
        raise ConfigError(key, f"must be HOST:PORT with a port 0-65535, got {value!r}")
    return host, port


def _expect(value: Any, kind: type | tuple[type, ...], key: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(key, f"must be a {name}, got {value!r}")
    return value


def _backend(name: str, table: Any, state_dir: Path) -> BackendConfig:
    key = f"backends.{name}"
    _expect(table, dict, key)
    if "driver" not in table:
        raise ConfigError(f"{key}.driver", "is required")
    driver = _expect(table["driver"], str, f"{key}.driver")
    workers = _expect(table.get("workers", 4), int, f"{key}.workers")
    if workers < 1:
        raise ConfigError(f"{key}.workers", "must be at least 1")
    target = _expect(table.get("target", "local"), str, f"{key}.target")
    if target not in TARGET_PROTOCOLS:
        raise ConfigError(f"{key}.target", f"must be one of {', '.join(TARGET_PROTOCOLS)}, "
                                           f"got {target!r}")
    options = {k: v for k, v in table.items() if k not in _BACKEND_KEYS}
    if driver == "file":
        options.setdefault("path", str(state_dir / "volumes" / name))
    return BackendConfig(
        name=name,
        driver=driver,
        availability_zone=_expect(table.get("availability_zone", "nova"), str,
                                  f"{key}.availability_zone"),
        volume_backend_name=_expect(table.get("volume_backend_name", name), str,
                                    f"{key}.volume_backend_name"),
        workers=workers,
        target=target,
        options=options,
    )


def _compute(table: Any) -> ComputeEndpoint:
    _expect(table, dict, "compute")
    unknown = sorted(set(table) - _COMPUTE_KEYS)
    if unknown:
        raise ConfigError(f"compute.{unknown[0]}", "unknown key")
    url = table.get("url")
    if url is not None:
        _expect(url, str, "compute.url")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
                or parts.fragment:
            raise ConfigError("compute.url", f"must be an http:// or https:// base URL, got "
                                             f"{url!r}")
        try:
            _ = parts.port  # raises on a port that is not a number or out of range
        except ValueError:
            raise ConfigError("compute.url", f"has a bad port: {url!r}") from None
    timeout = table.get("timeout", DEFAULT_COMPUTE_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not 0 < timeout < math.inf:
        raise ConfigError("compute.timeout", f"must be a number of seconds above 0, "
                                             f"got {timeout!r}")
    return ComputeEndpoint(url=url, timeout=float(timeout))


def build(
    data: dict[str, Any],
    *,
    state_dir: str | None = None,
    listen: str | None = None,
) -> Config:
    """Validate a parsed TOML document (command-line values win over the file's)."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown key")
    sdir = Path(state_dir or _expect(data.get("state_dir", "./var"), str, "state_dir")).absolute()
    host, port = parse_listen(listen or data.get("listen", DEFAULT_LISTEN))
    db_url = _expect(data.get("database_url", f"sqlite:///{sdir / 'blockyard.db'}"), str,
                     "database_url")
    backends_table = _expect(data.get("backends", {}), dict, "backends")
    if not backends_table:
        backends_table = {"default": {"driver": "file"}}
    backends = tuple(_backend(n, t, sdir) for n, t in backends_table.items())
    quotas = dict(DEFAULT_QUOTAS)
    for k, v in _expect(data.get("quota", {}), dict, "quota").items():
        if k not in DEFAULT_QUOTAS:
            raise ConfigError(f"quota.{k}", "unknown quota")
        quotas[k] = _expect(v, int, f"quota.{k}")
    targets = _expect(data.get("targets", {}), dict, "targets")
    for protocol, table in targets.items():
        if protocol not in TARGET_PROTOCOLS:
            raise ConfigError(f"targets.{protocol}", "unknown target protocol")
        _expect(table, dict, f"targets.{protocol}")
    return Config(
        targets={p: dict(t) for p, t in targets.items()},
        listen_host=host,
        listen_port=port,
        state_dir=sdir,
        database_url=db_url,
        host=_expect(data.get("host", socket.gethostname()), str, "host"),
        backends=backends,
        quotas=quotas,
        default_volume_type=_expect(data.get("default_volume_type", "__DEFAULT__"), str,
                                    "default_volume_type"),
        default_group_type=_expect(data.get("default_group_type", ""), str,
                                   "default_group_type") or None,
        max_volume_size_gb=_expect(data.get("max_volume_size_gb", 16384), int,
                                   "max_volume_size_gb"),
        compute=_compute(data.get("compute", {})),
    )


def load(path: str | None, *, state_dir: str | None = None, listen: str | None = None) -> Config:
    """Read and validate the config file at `path` (None: the embedded default)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("--config", f"no such file: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"not valid TOML: {exc}") from None
    return build(data, state_dir=state_dir, listen=listen)
