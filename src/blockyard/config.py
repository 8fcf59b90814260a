"""Configuration: a TOML file, or the embedded default (one sparse-file backend).

Example::

    listen = "127.0.0.1:8776"
    state_dir = "/var/lib/blockyard"
    database_url = "postgresql+psycopg://blockyard@/blockyard"   # default: SQLite in state_dir
    host = "storage1"                                           # default: this machine's name
    message_ttl = 2592000     # seconds a user message is kept (default: 30 days)

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

    [auth]                    # who may call (default: noauth, for loopback only)
    strategy = "keystone"     # tokens validated by keystonemiddleware against Keystone
    policy_file = "/etc/blockyard/policy.yaml"   # Cinder's policy.yaml overrides (optional)

    [keystone_authtoken]      # keystonemiddleware's options, by its names
    www_authenticate_uri = "http://keystone:5000/v3"
    auth_url = "http://keystone:5000/v3"
    username = "cinder"
    password = "..."
    project_name = "service"

    [service_user]            # this service's own credentials for calls it makes
    auth_url = "http://keystone:5000/v3"    # (default: those of [keystone_authtoken])
    username = "cinder"
    password = "..."
    project_name = "service"

    [compute]                 # where to send Nova's volume-extended events and swaps (optional)
    url = "http://127.0.0.1:8774/v2.1"    # the compute API base; without it none are sent
    timeout = 10                          # seconds per request
    swap_timeout = 3600                   # seconds compute may take to move an attached volume

Every key the file may hold is declared below, in one place: each table is a `Schema`, a dict
from key to `Option` (its TOML type, whether it is required, and a check of its value).
`read_table` applies a schema; an unknown key (usually a typo), a missing one, a value of the
wrong type (``control_port = "23457"``) or out of range is a `ConfigError` whose `key` is the
full dotted path, e.g. ``targets.iscsi.control_port``. The compute agent's configuration
(`blockyard.compute.config`) is declared with the same vocabulary.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
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
#: seconds a user message is listed before it expires (Cinder's message_ttl default: 30 days)
DEFAULT_MESSAGE_TTL = 2592000
#: seconds a request to the compute API may take, by default
DEFAULT_COMPUTE_TIMEOUT = 10.0
#: seconds compute may take to swap an attached volume that is migrated, by default: a mirror
#: of a large, busy volume takes long, and giving up early rolls back a healthy swap
DEFAULT_SWAP_TIMEOUT = 3600.0
#: export protocols a backend may name in `target`
TARGET_PROTOCOLS = ("local", "iscsi", "nbd", "rbd")
#: the largest control port tgtd takes (it keeps the number in a short)
TGT_MAX_CONTROL_PORT = 32767
#: the largest count or size the database keeps (a signed 32-bit column)
INT_MAX = 2**31 - 1


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
    #: seconds the migration of an attached volume waits for compute to swap the guest's
    #: disk (mirror, pivot, completion), and then again for it to let go of the old one,
    #: before the volume service gives up on it (`blockyard.service.migration`)
    swap_timeout: float = DEFAULT_SWAP_TIMEOUT


@dataclass(frozen=True)
class AuthConfig:
    """How callers are authenticated and authorised, and how this service authenticates its
    own calls to others. Shared by the volume service and the compute agent."""

    #: "noauth" (Cinder's: every caller an admin; loopback only) or "keystone"
    strategy: str = "noauth"
    #: keystonemiddleware ``auth_token`` options (its own names), for strategy "keystone"
    keystone_authtoken: Mapping[str, Any] = field(default_factory=dict)
    #: keystoneauth1 password-plugin options of this service's own user (auth_url,
    #: username, password, project_name, user_domain_name, project_domain_name); None
    #: under noauth
    service_user: Mapping[str, str] | None = None
    #: an oslo.policy file (YAML or JSON) overriding rule defaults, as Cinder's policy.yaml
    policy_file: Path | None = None

    @property
    def keystone(self) -> bool:
        return self.strategy == "keystone"


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
    #: options of each export target, by protocol ([targets.iscsi], [targets.nbd]), checked
    #: against TARGET_OPTIONS (lists made tuples)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: [compute]: where volume-extended events go
    compute: ComputeEndpoint = field(default_factory=ComputeEndpoint)
    #: seconds a user message is kept (Cinder's message_ttl)
    message_ttl: int = DEFAULT_MESSAGE_TTL
    #: [auth], [keystone_authtoken], [service_user]
    auth: AuthConfig = field(default_factory=lambda: AuthConfig())


# -- the vocabulary: options and the checks of their values ------------------------------------

#: a check gets a value of the option's TOML type and returns it (perhaps normalised), or
#: raises ValueError saying what the value must be
Check = Callable[[Any], Any]
_ABSENT: Any = object()


@dataclass(frozen=True)
class Option:
    """One key of a table."""

    #: its TOML type: str, int, float (an integer is taken too), bool, list or dict
    kind: type
    check: Check | None = None
    required: bool = False
    #: the value when the key is absent (_ABSENT: leave it out, the consumer has a default)
    default: Any = _ABSENT


Schema = Mapping[str, Option]

_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


def _kind_of(value: Any) -> str:
    for kind in (bool, int, float, str, list, dict):  # bool first: True is an int too
        if isinstance(value, kind):
            return _KIND_NAMES[kind]
    return type(value).__name__


def typed(value: Any, kind: type, key: str) -> Any:
    """`value` if it is of TOML type `kind` (an int where a float is wanted becomes a float)."""
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if kind is float and ok and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if not ok:
        raise ConfigError(key, f"must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r} "
                               f"({_kind_of(value)})")
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key(name: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (known: {', '.join(sorted(known)) or 'none'})"


def read_table(raw: Any, schema: Schema, key: str) -> dict[str, Any]:
    """Check the TOML table `raw` (at dotted path `key`) against `schema`: unknown keys,
    missing required ones, types and values. Returns the values given (as the checks
    normalised them) plus the declared defaults of the absent ones."""
    table = typed(raw, dict, key or "the file")
    for name in table:
        if name not in schema:
            raise ConfigError(_join(key, name), _unknown_key(name, schema))
    values: dict[str, Any] = {}
    for name, option in schema.items():
        full = _join(key, name)
        if name not in table:
            if option.required:
                raise ConfigError(full, "is required")
            if option.default is not _ABSENT:
                values[name] = option.default
            continue
        values[name] = checked(table[name], option, full)
    return values


def checked(value: Any, option: Option, key: str) -> Any:
    """One value, of the option's type and passing its check."""
    value = typed(value, option.kind, key)
    if option.check is None:
        return value
    try:
        return option.check(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def named_tables(raw: Any, key: str) -> dict[str, dict[str, Any]]:
    """A table of named sub-tables ([backends.<name>], [images.<name>]): each name must be
    usable in host strings and URLs."""
    tables: dict[str, dict[str, Any]] = typed(raw, dict, key)
    for name, table in tables.items():
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{key}.{name}", "a name may hold only letters, digits, '_', "
                                               "'.' and '-' (at most 64)")
        typed(table, dict, f"{key}.{name}")
    return tables


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: a host name (RFC 1123 labels) or an IP address
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def between(low: float, high: float | None = None, why: str = "") -> Check:
    """A number from `low` to `high` (None: no upper bound), both included."""
    def check(value: Any) -> Any:
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"{low}..{high}"
            raise ValueError(f"must be {span}{why}, got {value!r}")
        return value
    return check


def above(low: float) -> Check:
    """A number strictly greater than `low` (and finite)."""
    def check(value: Any) -> Any:
        if not low < value < float("inf"):
            raise ValueError(f"must be a number above {low}, got {value!r}")
        return value
    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    return check


def text(max_length: int = 255) -> Check:
    """A non-empty string without control characters."""
    def check(value: str) -> str:
        if not value.strip() or len(value) > max_length \
                or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"must be non-empty printable text of at most {max_length} "
                             f"characters, got {value!r}")
        return value
    return check


def matching(pattern: str, what: str) -> Check:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value
    return check


def a_path(value: str) -> str:
    """A file system path (not checked to exist: it may be created at start)."""
    if not value or "\0" in value:
        raise ValueError(f"must be a file system path, got {value!r}")
    return value


def a_host(value: str) -> str:
    """A host name or an IP address (IPv6 without brackets)."""
    if _is_ip(value) or _HOSTNAME.fullmatch(value):
        return value
    raise ValueError(f"must be a host name or an IP address, got {value!r}")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _split_host_port(value: str) -> tuple[str, str]:
    """'HOST:PORT' or '[v6]:PORT' → (host, port text); ValueError without a port."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or (":" in host and not (host.startswith("[")
                                                     and host.endswith("]"))):
        raise ValueError("no port")
    return host.removeprefix("[").removesuffix("]"), port


def _port(text: str, low: int = 1) -> int:
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= 65535:
        raise ValueError("bad port")
    return int(text)


def listen_address(value: str) -> tuple[str, int]:
    """HOST:PORT (host name or address, [v6] in brackets; port 0 picks a free one)."""
    try:
        host, port_text = _split_host_port(value)
        port = _port(port_text, low=0)
        a_host(host)
    except ValueError:
        raise ValueError(f"must be HOST:PORT (a host name or address, [IPv6] in brackets, "
                         f"and a port 0..65535), got {value!r}") from None
    return host, port


def portal(value: str) -> str:
    """IP:PORT an initiator can reach: an address, not a name, and not 0.0.0.0 or ::."""
    try:
        host, port_text = _split_host_port(value)
        _port(port_text)
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"must be ADDRESS:PORT (an IPv4 address, or [IPv6] in brackets, and "
                         f"a port 1..65535), got {value!r}") from None
    if address.is_unspecified:
        raise ValueError(f"must be an address initiators can reach (it is handed to them as "
                         f"target_portal), not {host}")
    return value


def port_range(value: list[Any]) -> tuple[int, int]:
    """[LOW, HIGH]: two TCP port numbers, LOW <= HIGH."""
    shape = f"must be [LOW, HIGH], two TCP ports with 1 <= LOW <= HIGH <= 65535, got {value!r}"
    if len(value) != 2 or not all(isinstance(p, int) and not isinstance(p, bool)
                                  for p in value):
        raise ValueError(shape)
    low, high = value
    if not 1 <= low <= high <= 65535:
        raise ValueError(shape)
    return low, high


def http_url(value: str) -> str:
    """An http:// or https:// base URL (no query or fragment)."""
    parts = urllib.parse.urlsplit(value)
    try:
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError:
        raise ValueError(f"has a bad port: {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query \
            or parts.fragment:
        raise ValueError(f"must be an http:// or https:// base URL, got {value!r}")
    return value


#: the versioned compute endpoint: ".../v2.1" or ".../v2", perhaps with a project id after it
#: (not a resource: ".../v2.1/os-server-external-events" is a wiring mistake too)
_COMPUTE_VERSIONED = re.compile(r"/v2(\.1)?(/(?!os-|servers/?$)[^/]+)?/?$")


def compute_api_url(value: str) -> str:
    """The compute API's versioned endpoint (Nova's catalog entry, ``.../v2.1``): the volume
    service appends only the resource (``/os-server-external-events``, ``/servers/...``), so
    the root URL of the service would make every call 404."""
    value = http_url(value)
    path = urllib.parse.urlsplit(value).path
    if not _COMPUTE_VERSIONED.search(path):
        raise ValueError(f"is the compute API's versioned endpoint, ending in /v2.1 (the volume "
                         f"service adds /os-server-external-events, /servers/...): {value!r} "
                         f"should be {value.rstrip('/') + '/v2.1'!r}")
    return value


def database_url(value: str) -> str:
    """A SQLAlchemy URL, e.g. sqlite:////var/lib/blockyard/blockyard.db."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except (ArgumentError, ValueError):
        raise ValueError(f"must be a SQLAlchemy database URL (dialect+driver://...), "
                         f"got {value!r}") from None
    return value


# -- the schema ---------------------------------------------------------------------------------

_SECONDS = Option(float, above(0))
#: Cinder's host strings are host@backend#pool: neither part may hold '@' or '#'
HOST_NAME = Option(str, matching(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}",
                             "a host name (letters, digits, '_', '.', '-'; it starts the host "
                             "strings host@backend#pool)"))

TOP: Schema = {
    "listen": Option(str, listen_address),
    "state_dir": Option(str, a_path),
    "database_url": Option(str, database_url),
    "host": HOST_NAME,
    "default_volume_type": Option(str, text()),
    "default_group_type": Option(str, text()),
    "max_volume_size_gb": Option(int, between(1, INT_MAX)),
    "quota": Option(dict),
    "backends": Option(dict),
    "targets": Option(dict),
    "compute": Option(dict),
    "message_ttl": Option(int, between(1, 10 * 365 * 86400, " seconds")),
    "auth": Option(dict),
    "keystone_authtoken": Option(dict),
    "service_user": Option(dict),
}

QUOTA: Schema = {name: Option(int, between(-1, INT_MAX, " (-1: unlimited)"))
                 for name in DEFAULT_QUOTAS}

COMPUTE: Schema = {
    "url": Option(str, compute_api_url),
    "timeout": Option(float, above(0), default=DEFAULT_COMPUTE_TIMEOUT),
    "swap_timeout": Option(float, above(0), default=DEFAULT_SWAP_TIMEOUT),
}

#: the keys of every [backends.<name>] table; the driver's own options are in DRIVER_OPTIONS
BACKEND: Schema = {
    "driver": Option(str, required=True),
    "availability_zone": Option(str, text(), default="nova"),
    "volume_backend_name": Option(str, text()),
    "workers": Option(int, between(1, 256), default=4),
    "target": Option(str, one_of(*TARGET_PROTOCOLS), default="local"),
}

_PERCENT = Option(int, between(0, 100))
_RATIO = Option(float, between(1.0))
_RBD_NAME = Option(str, matching(r"[A-Za-z0-9_.-]+", "a name of letters, digits, '_', '.', "
                                                     "'-'"))

#: each driver's own options (blockyard.backends.DRIVERS), and the targets it can export with
DRIVER_OPTIONS: dict[str, Schema] = {
    "file": {
        "path": Option(str, a_path),
        "total_capacity_gb": Option(float, between(0)),
        "reserved_percentage": _PERCENT,
        "max_over_subscription_ratio": _RATIO,
    },
    "rbd": {
        "pool": Option(_RBD_NAME.kind, _RBD_NAME.check, required=True),
        "user": _RBD_NAME,
        "conf": Option(str, a_path),
        "keyring": Option(str, a_path),
        "rados_connect_timeout": Option(float, between(0.1)),
        "reserved_percentage": _PERCENT,
        "max_over_subscription_ratio": _RATIO,
    },
    "fake": {  # in memory, for tests
        "total_capacity_gb": Option(float, between(0)),
        "online_extend": Option(bool),
        "multiattach": Option(bool),
    },
}
DRIVER_TARGETS: dict[str, tuple[str, ...]] = {
    "file": ("local", "iscsi", "nbd"),
    "rbd": ("local", "rbd"),  # native connections: "local" means the same as "rbd"
    "fake": ("local",),
}

#: [targets.<protocol>]: the keyword arguments of each target class (blockyard.targets.TARGETS);
#: what is absent takes the class's default
TARGET_OPTIONS: dict[str, Schema] = {
    "local": {},
    "rbd": {},
    "iscsi": {
        "portal": Option(str, portal),
        "control_port": Option(int, between(1, TGT_MAX_CONTROL_PORT,
                                            " (the tgtd control socket number, not a TCP port)"),
                               required=True),
        "iqn_prefix": Option(str, matching(r"iqn\.\d{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9][A-Za-z0-9.-]*"
                                           r"([:.][^\s,]{0,150})?",
                                           "an IQN prefix like 'iqn.2010-10.org.openstack:'")),
        "chap": Option(bool),
        "timeout": _SECONDS,
    },
    "nbd": {
        "mode": Option(str, one_of("unix", "tcp")),
        "bind": Option(str, a_host),
        "advertise_host": Option(str, a_host),
        "port_range": Option(list, port_range),
        "tls": Option(bool),
        "cache": Option(str, one_of("auto", "none", "writeback")),
        "max_clients": Option(int, between(1, 1024)),
        "qemu_nbd": Option(str, a_path),
        "start_timeout": _SECONDS,
        "stop_timeout": _SECONDS,
    },
}


# -- building the Config ------------------------------------------------------------------------


def parse_listen(value: Any, key: str = "listen") -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') → (host, port)."""
    result: tuple[str, int] = checked(value, Option(str, listen_address), key)
    return result


def _backend(name: str, table: dict[str, Any], state_dir: Path) -> BackendConfig:
    key = f"backends.{name}"
    if "driver" not in table:
        raise ConfigError(f"{key}.driver", f"is required (one of {', '.join(DRIVER_OPTIONS)})")
    driver = checked(table["driver"], BACKEND["driver"], f"{key}.driver")
    if driver not in DRIVER_OPTIONS:
        raise ConfigError(f"{key}.driver", f"unknown driver {driver!r} "
                                           f"(known: {', '.join(sorted(DRIVER_OPTIONS))})")
    values = read_table(table, {**BACKEND, **DRIVER_OPTIONS[driver]}, key)
    if values["target"] not in DRIVER_TARGETS[driver]:
        raise ConfigError(f"{key}.target", f"the {driver} driver exports through "
                                           f"{', '.join(DRIVER_TARGETS[driver])}, not "
                                           f"{values['target']!r}")
    options = {k: v for k, v in values.items() if k not in BACKEND}
    if driver == "file":
        options.setdefault("path", str(state_dir / "volumes" / name))
    return BackendConfig(
        name=name,
        driver=driver,
        availability_zone=values["availability_zone"],
        volume_backend_name=values.get("volume_backend_name", name),
        workers=values["workers"],
        target=values["target"],
        options=options,
    )


def _targets(raw: Any, backends: tuple[BackendConfig, ...]) -> dict[str, dict[str, Any]]:
    """[targets.<protocol>] of every protocol declared or used by a backend (so a required
    option of a target in use is reported even without its table)."""
    tables = typed(raw, dict, "targets")
    for protocol in tables:
        if protocol not in TARGET_OPTIONS:
            raise ConfigError(f"targets.{protocol}", f"unknown target (known: "
                                                     f"{', '.join(TARGET_OPTIONS)})")
    used = {bc.target: bc.name for bc in backends}
    for protocol, backend in used.items():
        required = [n for n, option in TARGET_OPTIONS[protocol].items() if option.required]
        if protocol not in tables and required:
            raise ConfigError(f"targets.{protocol}.{required[0]}",
                              f"is required (backends.{backend} exports through {protocol})")
    result = {protocol: read_table(tables.get(protocol, {}), TARGET_OPTIONS[protocol],
                                   f"targets.{protocol}")
              for protocol in sorted(set(tables) | set(used))}
    nbd = result.get("nbd", {})
    if _is_ip(nbd.get("bind", "")) and ipaddress.ip_address(nbd["bind"]).is_unspecified \
            and "advertise_host" not in nbd:
        raise ConfigError("targets.nbd.advertise_host", f"is required when bind is "
                                                        f"{nbd['bind']} (clients are told "
                                                        f"where to connect)")
    return result


def build(
    data: dict[str, Any],
    *,
    state_dir: str | None = None,
    listen: str | None = None,
) -> Config:
    """Validate a parsed TOML document (command-line values win over the file's)."""
    top = read_table(data, TOP, "")
    sdir = Path(state_dir or top.get("state_dir", "./var")).absolute()
    if listen is not None:
        host, port = parse_listen(listen, "--listen")
    else:
        host, port = top.get("listen") or parse_listen(DEFAULT_LISTEN)
    backends_table = named_tables(top.get("backends", {}), "backends")
    if not backends_table:
        backends_table = {"default": {"driver": "file"}}
    backends = tuple(_backend(n, t, sdir) for n, t in backends_table.items())
    quotas = {**DEFAULT_QUOTAS, **read_table(top.get("quota", {}), QUOTA, "quota")}
    compute = read_table(top.get("compute", {}), COMPUTE, "compute")
    return Config(
        targets=_targets(top.get("targets", {}), backends),
        listen_host=host,
        listen_port=port,
        state_dir=sdir,
        database_url=top.get("database_url", f"sqlite:///{sdir / 'blockyard.db'}"),
        host=top.get("host") or socket.gethostname(),
        backends=backends,
        quotas=quotas,
        default_volume_type=top.get("default_volume_type", "__DEFAULT__"),
        max_volume_size_gb=top.get("max_volume_size_gb", 16384),
        default_group_type=top.get("default_group_type") or None,
        compute=ComputeEndpoint(**compute),
        message_ttl=top.get("message_ttl", DEFAULT_MESSAGE_TTL),
        auth=read_auth(top),
    )


# -- [auth], [keystone_authtoken], [service_user] ----------------------------------------------

AUTH: Schema = {
    "strategy": Option(str, one_of("noauth", "keystone"), default="noauth"),
    "policy_file": Option(str, a_path),
}

#: [service_user]: a keystoneauth1 password plugin's options
SERVICE_USER: Schema = {
    "auth_url": Option(str, http_url, required=True),
    "username": Option(str, text(), required=True),
    "password": Option(str, required=True),
    "project_name": Option(str, text(), required=True),
    "user_domain_name": Option(str, text(), default="Default"),
    "project_domain_name": Option(str, text(), default="Default"),
}

#: [keystone_authtoken] options whose absence makes every token fail to validate
_AUTHTOKEN_REQUIRED = ("www_authenticate_uri", "auth_url", "username", "password")


def _authtoken_options(auth_type: str, key: str) -> dict[str, Any]:
    """The options keystonemiddleware knows, plus those of the auth plugin it will load,
    by name (imported only when keystone is configured)."""
    from keystoneauth1 import loading
    from keystonemiddleware import auth_token

    known: dict[str, Any] = {}
    for _group, opts in auth_token.list_opts():
        known.update({opt.dest: opt for opt in opts})
    from importlib.metadata import entry_points

    # by entry point name: asking keystoneauth would import (and log failures of) every plugin
    if auth_type not in entry_points(group="keystoneauth1.plugin").names:
        raise ConfigError(f"{key}.auth_type", f"no keystoneauth plugin named {auth_type!r} "
                                              f"(e.g. 'password', 'v3password')")
    loader: Any = loading.get_plugin_loader(auth_type)
    known.update({opt.dest: opt for opt in loader.get_options()})
    known.update({"auth_type": None, "auth_section": None})
    return known


def read_authtoken(raw: Any, key: str = "keystone_authtoken") -> dict[str, Any]:
    """[keystone_authtoken]: keys checked against keystonemiddleware's and the auth plugin's
    option names (a typo is an error naming it, not an option silently ignored)."""
    table: dict[str, Any] = dict(typed(raw, dict, key))
    table.setdefault("auth_type", "password")
    known = _authtoken_options(str(table["auth_type"]), key)
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"{key}.{name}", _unknown_key(name, known))
        if isinstance(value, dict):
            raise ConfigError(f"{key}.{name}", "must be a value, got a table")
        convert = getattr(known[name], "type", None)
        if callable(convert):  # the option's own type: what keystonemiddleware would refuse
            try:
                convert(paste_value(value))
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{key}.{name}", f"invalid value {value!r}: {exc}") from None
    for name in _AUTHTOKEN_REQUIRED:
        if name not in table:
            raise ConfigError(f"{key}.{name}", "is required when [auth] strategy is "
                                               "\"keystone\"")
    for name in ("www_authenticate_uri", "auth_url"):
        checked(table[name], Option(str, http_url), f"{key}.{name}")
    return table


def paste_value(value: Any) -> str:
    """A TOML value as keystonemiddleware takes its paste-deploy options: text, which it
    converts to each option's type itself."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _service_user_from(authtoken: Mapping[str, Any]) -> dict[str, Any]:
    """[service_user] defaults to the credentials keystonemiddleware uses."""
    return {name: authtoken[name] for name in SERVICE_USER if name in authtoken}


def read_auth(top: Mapping[str, Any]) -> AuthConfig:
    """[auth] with [keystone_authtoken] and [service_user], checked together."""
    auth = read_table(top.get("auth", {}), AUTH, "auth")
    policy_file = Path(auth["policy_file"]) if "policy_file" in auth else None
    if policy_file is not None and not policy_file.is_file():
        raise ConfigError("auth.policy_file", f"no such file: {policy_file}")
    if auth["strategy"] == "noauth":
        for table in ("keystone_authtoken", "service_user"):
            if table in top:
                raise ConfigError(table, "is only used when [auth] strategy is \"keystone\"")
        return AuthConfig(strategy="noauth", policy_file=policy_file)
    authtoken = read_authtoken(top.get("keystone_authtoken", {}))
    raw_user = top.get("service_user")
    if raw_user is None:
        raw_user = _service_user_from(authtoken)
        where = "keystone_authtoken"
    else:
        where = "service_user"
    service_user = read_table(raw_user, SERVICE_USER, where)
    return AuthConfig(strategy="keystone", keystone_authtoken=authtoken,
                      service_user=service_user, policy_file=policy_file)


def read_toml(path: str) -> dict[str, Any]:
    """The parsed file; a missing or unreadable file or bad TOML is a ConfigError on --config."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError("--config", f"no such file: {path}") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"not valid TOML: {exc}") from None


def load(path: str | None, *, state_dir: str | None = None, listen: str | None = None) -> Config:
    """Read and validate the config file at `path` (None: the embedded default)."""
    data = read_toml(path) if path is not None else {}
    return build(data, state_dir=state_dir, listen=listen)
