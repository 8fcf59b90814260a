"""The values the layers exchange: the bottom of blockyard, importing only `blockyard.errors`.

Backends, targets and connectors are siblings that never import each other; what they share
is here, and so is what the service hands them and gets back:

- references and results of the driver contract: `VolumeRef`, `SnapshotRef`, `Connector`,
  `ModelUpdate`, `OpenMode`;
- Cinder's ``connection_info``, typed: one frozen dataclass per protocol (`IscsiInfo`,
  `NbdInfo`, `LocalInfo`, `RbdInfo`; `ConnectionInfo` is their union). `parse` checks a wire
  dict once, naming a missing or malformed key; `to_wire()` gives the dict back, only where
  a dict is really needed (the API's answer, the attachment row). Nothing else sniffs keys;
- the target contract: `Export` (what an export is, as persisted) and `Target`;
- the handle contract of data copies: `VolumeHandle` (a raw, seekable, fixed-size file) and
  its `Extent`s.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from blockyard.errors import ConnectionInfoError

GiB = 1024**3

OpenMode = Literal["rb", "r+b"]


@dataclass(frozen=True)
class VolumeRef:
    """The part of a volume a driver needs."""

    id: str
    size_gb: int
    #: the backend object name; differs from `id` after a migration swapped identities
    name_id: str | None = None
    provider_location: str | None = None
    provider_auth: str | None = None

    @property
    def name(self) -> str:
        """The backend object name, e.g. the file name: ``volume-<uuid>``."""
        return f"volume-{self.name_id or self.id}"

    @property
    def size_bytes(self) -> int:
        return self.size_gb * GiB


@dataclass(frozen=True)
class SnapshotRef:
    """The part of a snapshot a driver needs, with the volume it was taken of."""

    id: str
    volume: VolumeRef
    size_gb: int
    provider_location: str | None = None

    @property
    def name(self) -> str:
        return f"snapshot-{self.id}"


@dataclass(frozen=True)
class Connector:
    """Who attaches: the initiator side's properties, as os-brick's connector dict carries them."""

    host: str | None = None
    ip: str | None = None
    initiator: str | None = None
    platform: str | None = None
    os_type: str | None = None
    multipath: bool = False
    nqn: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelUpdate:
    """What a driver asks the service to store on the volume (None: leave unchanged)."""

    provider_location: str | None = None
    provider_auth: str | None = None


# ---------------------------------------------------------------------------- connection info


AccessMode = Literal["rw", "ro"]


@dataclass(frozen=True)
class IscsiInfo:
    protocol: ClassVar[str] = "iscsi"

    target_iqn: str
    #: "host:port" ("[v6addr]:port" for IPv6)
    target_portal: str
    target_lun: int
    volume_id: str | None = None
    access_mode: AccessMode = "rw"
    #: "CHAP", or None for no authentication
    auth_method: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None

    def __repr__(self) -> str:  # never print the CHAP secret
        return (f"IscsiInfo(target_iqn={self.target_iqn!r}, target_portal="
                f"{self.target_portal!r}, target_lun={self.target_lun}, volume_id="
                f"{self.volume_id!r}, access_mode={self.access_mode!r}, auth_method="
                f"{self.auth_method!r})")

    def to_wire(self) -> dict[str, Any]:
        """Cinder's iSCSI connection_info (CHAP credentials included when set)."""
        data: dict[str, Any] = {
            "target_discovered": False,
            "target_iqn": self.target_iqn,
            "target_portal": self.target_portal,
            "target_lun": self.target_lun,
            "volume_id": self.volume_id,
            "access_mode": self.access_mode,
            "encrypted": False,
        }
        if self.auth_method:
            data.update(auth_method=self.auth_method, auth_username=self.auth_username,
                        auth_password=self.auth_password)
        return _wire(self.protocol, data)


@dataclass(frozen=True)
class NbdInfo:
    protocol: ClassVar[str] = "nbd"

    export_name: str
    #: a unix socket path; or None, and then host and port are set
    socket: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False
    tls_psk_identity: str | None = None
    #: the pre-shared key, hex as GnuTLS's psktool writes it
    tls_psk_key: str | None = None
    volume_id: str | None = None
    access_mode: AccessMode = "rw"

    def __repr__(self) -> str:  # never print the PSK
        where = (f"socket={self.socket!r}" if self.socket
                 else f"host={self.host!r}, port={self.port}")
        return (f"NbdInfo(export_name={self.export_name!r}, {where}, tls={self.tls}, "
                f"volume_id={self.volume_id!r}, access_mode={self.access_mode!r})")

    @property
    def uri(self) -> str:
        """The NBD URI that QEMU, qemu-img and nbdinfo understand (without secrets)."""
        scheme = "nbds" if self.tls else "nbd"
        if self.socket:
            return f"{scheme}+unix:///{self.export_name}?socket={self.socket}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.export_name}"

    def to_wire(self) -> dict[str, Any]:
        """The NBD connection_info (the TLS identity and key included when `tls`)."""
        data: dict[str, Any] = {"export_name": self.export_name, "volume_id": self.volume_id,
                                "access_mode": self.access_mode, "tls": self.tls}
        where = {"host": self.host, "port": self.port, "socket": self.socket}
        data.update({k: v for k, v in where.items() if v is not None})
        if self.tls:
            data.update(tls_psk_identity=self.tls_psk_identity, tls_psk_key=self.tls_psk_key)
        return _wire(self.protocol, data)


@dataclass(frozen=True)
class LocalInfo:
    protocol: ClassVar[str] = "local"

    device_path: str
    volume_id: str | None = None
    access_mode: AccessMode = "rw"

    def to_wire(self) -> dict[str, Any]:
        return _wire(self.protocol, {"device_path": self.device_path,
                                     "volume_id": self.volume_id,
                                     "access_mode": self.access_mode})


@dataclass(frozen=True)
class RbdInfo:
    """A Ceph RBD image, as Cinder's RBD driver describes it (``driver_volume_type: rbd``).

    blockyard has no libvirt secret store, so the cephx `key` travels in the connection info
    itself (as the CHAP password does for iSCSI); it never shows in a repr.
    """

    protocol: ClassVar[str] = "rbd"

    pool: str
    image: str
    #: the monitors, as (host, port) pairs (msgr v1 ports, which QEMU's server list means)
    monitors: tuple[tuple[str, int], ...]
    auth_enabled: bool = True
    #: the cephx id, without "client."
    auth_username: str | None = None
    #: the cephx key (base64), or None: use the key of this host's ceph.conf/keyring
    key: str | None = None
    cluster_name: str = "ceph"
    #: the RBD snapshot to open instead of the image head (read-only), if any
    snapshot: str | None = None
    discard: bool = True
    volume_id: str | None = None
    access_mode: AccessMode = "rw"

    def __repr__(self) -> str:  # never print the cephx key
        return (f"RbdInfo(pool={self.pool!r}, image={self.image!r}, monitors="
                f"{self.monitors!r}, auth_username={self.auth_username!r}, volume_id="
                f"{self.volume_id!r}, access_mode={self.access_mode!r})")

    @property
    def name(self) -> str:
        """``pool/image``, Cinder's ``name``."""
        return f"{self.pool}/{self.image}"

    @property
    def mon_host(self) -> str:
        """The monitors as a ceph ``mon_host`` value."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.monitors)

    def to_wire(self) -> dict[str, Any]:
        """Cinder's RBD connection_info (ports as strings, as Cinder's driver gives them),
        plus the cephx key and a keyring holding it when the key travels along."""
        data: dict[str, Any] = {
            "name": self.name,
            "hosts": [h for h, _ in self.monitors],
            "ports": [str(p) for _, p in self.monitors],
            "cluster_name": self.cluster_name,
            "auth_enabled": self.auth_enabled,
            "auth_username": self.auth_username,
            "secret_type": "ceph",
            "secret_uuid": None,
            "volume_id": self.volume_id,
            "access_mode": self.access_mode,
            "discard": self.discard,
        }
        if self.snapshot is not None:
            data["snapshot"] = self.snapshot
        if self.key is not None:
            data["key"] = self.key
            data["keyring"] = f"[client.{self.auth_username}]\n\tkey = {self.key}\n"
        return _wire(self.protocol, data)


#: Cinder's connection_info, one dataclass per protocol (tagged by `protocol`)
ConnectionInfo = IscsiInfo | NbdInfo | LocalInfo | RbdInfo


def _wire(protocol: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"driver_volume_type": protocol, "data": data}


def parse(wire: ConnectionInfo | Mapping[str, Any]) -> ConnectionInfo:
    """Parse Cinder's connection info (the wire dict, ``{"driver_volume_type": ..., "data":
    {...}}``) into the dataclass of its protocol; a typed info is returned as it is."""
    if isinstance(wire, IscsiInfo | NbdInfo | LocalInfo | RbdInfo):
        return wire
    if "driver_volume_type" not in wire:
        raise ConnectionInfoError("connection_info has no driver_volume_type.")
    tag, data = wire["driver_volume_type"], wire.get("data")
    if not isinstance(data, Mapping):
        raise ConnectionInfoError(f"connection_info data for {tag!r} must be an object.")
    parser = _PARSERS.get(tag)
    if parser is None:
        raise ConnectionInfoError(
            f"Unsupported driver_volume_type {tag!r}; supported: {', '.join(sorted(_PARSERS))}."
        )
    return parser(_Fields(tag, data))


class _Fields:
    """Typed access to one protocol's data dict, with errors that name the key."""

    def __init__(self, tag: str, data: Mapping[str, Any]) -> None:
        self.tag = tag
        self.data = data

    def _bad(self, key: str, why: str) -> ConnectionInfoError:
        return ConnectionInfoError(f"{self.tag} connection_info: {key!r} {why}.")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if value is None:
            raise self._bad(key, "is missing")
        if not isinstance(value, str) or not value:
            raise self._bad(key, "must be a non-empty string")
        return value

    def opt_text(self, key: str) -> str | None:
        return self.text(key) if self.data.get(key) is not None else None

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if value is None:
            raise self._bad(key, "is missing")
        if isinstance(value, bool):
            raise self._bad(key, "must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise self._bad(key, "must be an integer") from None

    def opt_integer(self, key: str) -> int | None:
        return self.integer(key) if self.data.get(key) is not None else None

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self._bad(key, "must be true or false")
        return value

    def export_name(self) -> str:
        value = self.data.get("export_name", "")  # the NBD default export is ""
        if not isinstance(value, str):
            raise self._bad("export_name", "must be a string")
        return value

    def access_mode(self) -> AccessMode:
        value = self.data.get("access_mode") or "rw"
        if value not in ("rw", "ro"):
            raise self._bad("access_mode", "must be 'rw' or 'ro'")
        return "ro" if value == "ro" else "rw"


def _parse_iscsi(f: _Fields) -> IscsiInfo:
    portal = f.text("target_portal")
    host, _, port = portal.rpartition(":")
    if not host or not port.isdigit():
        raise f._bad("target_portal", "must be 'host:port'")
    auth_method = f.opt_text("auth_method")
    if auth_method is not None and auth_method.upper() != "CHAP":
        raise f._bad("auth_method", "must be 'CHAP' when present")
    info = IscsiInfo(
        target_iqn=f.text("target_iqn"),
        target_portal=portal,
        target_lun=f.integer("target_lun"),
        volume_id=f.opt_text("volume_id"),
        access_mode=f.access_mode(),
        auth_method="CHAP" if auth_method else None,
        auth_username=f.text("auth_username") if auth_method else None,
        auth_password=f.text("auth_password") if auth_method else None,
    )
    return info


def _parse_nbd(f: _Fields) -> NbdInfo:
    socket = f.opt_text("socket")
    host = port = None
    if socket is None:
        if f.data.get("host") is None:
            raise f._bad("socket", "is missing (and so is 'host')")
        host, port = f.text("host"), f.integer("port")
    tls = f.flag("tls")
    return NbdInfo(
        export_name=f.export_name(),
        socket=socket,
        host=host,
        port=port,
        tls=tls,
        tls_psk_identity=f.text("tls_psk_identity") if tls else None,
        tls_psk_key=f.text("tls_psk_key") if tls else None,
        volume_id=f.opt_text("volume_id"),
        access_mode=f.access_mode(),
    )


def _parse_local(f: _Fields) -> LocalInfo:
    return LocalInfo(device_path=f.text("device_path"), volume_id=f.opt_text("volume_id"),
                     access_mode=f.access_mode())


def _parse_rbd(f: _Fields) -> RbdInfo:
    pool, sep, image = f.text("name").partition("/")
    if not sep or not pool or not image or "/" in image:
        raise f._bad("name", "must be 'pool/image'")
    hosts, ports = f.data.get("hosts"), f.data.get("ports")
    if not isinstance(hosts, list) or not hosts or not all(
            isinstance(h, str) and h for h in hosts):
        raise f._bad("hosts", "must be a non-empty list of monitor host names")
    if not isinstance(ports, list) or len(ports) != len(hosts):
        raise f._bad("ports", "must be a list with one port per host")
    try:
        port_numbers = [int(p) for p in ports if not isinstance(p, bool)]
    except (TypeError, ValueError):
        raise f._bad("ports", "must hold port numbers") from None
    if len(port_numbers) != len(ports) or not all(0 < p < 65536 for p in port_numbers):
        raise f._bad("ports", "must hold port numbers")
    auth = f.flag("auth_enabled")
    return RbdInfo(
        pool=pool,
        image=image,
        monitors=tuple(zip(hosts, port_numbers, strict=True)),
        auth_enabled=auth,
        auth_username=f.text("auth_username") if auth else f.opt_text("auth_username"),
        key=f.opt_text("key"),
        cluster_name=f.opt_text("cluster_name") or "ceph",
        snapshot=f.opt_text("snapshot"),
        discard=bool(f.data.get("discard", True)),
        volume_id=f.opt_text("volume_id"),
        access_mode=f.access_mode(),
    )


_PARSERS: dict[str, Callable[[_Fields], ConnectionInfo]] = {
    "iscsi": _parse_iscsi,
    "nbd": _parse_nbd,
    "local": _parse_local,
    "rbd": _parse_rbd,
}


# ---------------------------------------------------------------------------- exports


@dataclass(frozen=True)
class Export:
    """What an export is, as persisted with the volume (JSON-serialisable).

    `data` holds the protocol's addressing (iSCSI: target_iqn, target_portal, target_lun, tid;
    NBD: socket path or host/port, export_name); `secrets` its credentials (CHAP username and
    password, TLS PSK), which only ever leave the service in connection_info; `connectors`
    the initiators currently allowed (IQNs, or host names for NBD).
    """

    protocol: str
    data: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    connectors: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "data": dict(self.data),
                "secrets": dict(self.secrets), "connectors": list(self.connectors)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Export:
        return cls(raw["protocol"], dict(raw["data"]), dict(raw.get("secrets", {})),
                   tuple(raw.get("connectors", ())))


class Target(Protocol):
    """One export protocol, with the daemons it supervises: export a volume's backing path to
    one connector at a time.

    `export` does all the export work for one connector, once (the seed: create_export
    receives the connector) and returns an `Export` that the volume service persists;
    `connection_info` only formats a persisted `Export` and must have no side effects (it is
    called again and again). After a restart, `ensure` re-creates what the target daemon
    forgot (tgtd keeps no state; qemu-nbd processes are gone).
    """

    protocol: str
    #: whether a volume may grow while exported: True when an attached consumer can pick up
    #: the new size (QEMU's block_resize on a local file); False when the protocol or the
    #: daemon fixes the size the initiator sees for as long as the export lives
    online_resize: bool
    #: why not, when `online_resize` is False (for the API's refusal), e.g. "QEMU cannot grow
    #: an NBD disk"
    online_resize_blocker: str

    def start(self) -> None:
        """Start (or adopt) the target's daemons; idempotent."""

    def stop(self) -> None:
        """Let go of the daemons at service shutdown: those serving exports keep running (the
        next `start` adopts them); only daemons with nothing to serve are stopped."""

    def teardown(self) -> None:
        """Stop every daemon and export of this target (a deliberate full stop)."""

    def prune(self, keep: Iterable[Export]) -> list[str]:
        """Remove the exports the daemons hold that none of `keep` (the exports persisted with
        volumes) describes; returns their names."""

    def validate_connector(self, connector: Connector) -> None:
        """Raise `blockyard.errors.Invalid` when the connector lacks what the protocol needs."""

    def export(self, volume: VolumeRef, path: str, connector: Connector,
               existing: Export | None) -> Export:
        """Export `path` (the volume's backing file or device) to `connector`: create the
        target/export on first use, then allow this connector. Idempotent per connector."""

    def ensure(self, volume: VolumeRef, path: str, export: Export) -> Export:
        """Re-create a persisted export after a restart (same addressing and secrets where the
        protocol allows; the returned Export is what to persist from now on)."""

    def unexport(self, volume: VolumeRef, export: Export, connector: Connector | None) -> Export:
        """Stop allowing `connector` (None: every connector); returns the remaining export."""

    def remove(self, volume: VolumeRef, export: Export) -> None:
        """Delete the export entirely (target, LUN, ACLs, accounts, processes). Idempotent."""

    def connection_info(self, volume: VolumeRef, export: Export,
                        connector: Connector) -> ConnectionInfo:
        """Format `export` for `connector`: pure, cheap, no side effects."""

    def exports(self) -> list[str]:
        """Names of the exports the running daemons have (for leak checks and sweeps)."""


# ---------------------------------------------------------------------------- volume handles


class Extent(NamedTuple):
    offset: int
    length: int
    #: False: a hole (reads as zeros, allocates nothing)
    is_data: bool


class VolumeHandle(io.RawIOBase):
    """A volume opened for reading (and writing): positioned I/O over a fixed size.

    Subclasses supply `_pread` (or `_preadinto`), `_pwrite`, `_flush`, `_release` and may
    refine `extents`; this class owns the position, the bounds and the mode checks. Writing
    past the end raises ENOSPC (a volume does not grow by writing); reading there returns b"".
    """

    # class-level defaults, so a handle whose __init__ failed closes quietly in __del__
    _released = True
    _writable = False

    def __init__(self, size: int, writable: bool, name: str) -> None:
        super().__init__()
        self._size = size
        self._writable = writable
        self._pos = 0
        self.name = name
        self._released = False

    # what subclasses supply
    def _pread(self, count: int, offset: int) -> bytes:
        raise NotImplementedError

    def _preadinto(self, view: memoryview, offset: int) -> None:
        """Fill `view` from `offset` (inside the volume); override to read without a copy."""
        view[:] = self._pread(len(view), offset)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Make written data durable on the volume."""

    def _release(self) -> None:
        """Free the connection (called once, by close)."""

    # the file protocol
    @property
    def size(self) -> int:
        return self._size

    @property
    def mode(self) -> str:
        return "r+b" if self._writable else "rb"

    def readable(self) -> bool:
        self._checkClosed()
        return True

    def writable(self) -> bool:
        self._checkClosed()
        return self._writable

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(errno.EINVAL, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        self._preadinto(view[:count], self._pos)
        self._pos += count
        return count

    def write(self, data: Any) -> int:
        self._checkClosed()
        if not self._writable:
            raise io.UnsupportedOperation(f"{self.name} is open read-only")
        view = memoryview(data).cast("B")
        if not view:
            return 0
        if self._pos + len(view) > self._size:
            raise OSError(errno.ENOSPC, f"write of {len(view)} bytes at {self._pos} passes the "
                                        f"end of {self.name} ({self._size} bytes)")
        self._pwrite(view, self._pos)
        self._pos += len(view)
        return len(view)

    def flush(self) -> None:
        if not self.closed and not self._released and self._writable:
            self._flush()
        super().flush()

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("a volume cannot be truncated; extend it instead")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            try:
                if not self._released:
                    self._release()
            finally:
                self._released = True
                super().close()

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """(offset, length, is_data) runs covering [offset, offset+length) in order. The
        default knows nothing, so it reports one data extent."""
        self._checkClosed()
        end = self._size if length is None else min(self._size, offset + length)
        if offset < end:
            yield Extent(offset, end - offset, True)
