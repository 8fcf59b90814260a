"""Typed connection info: Cinder's ``connection_info`` dict, parsed once at the edge.

`parse` turns a `ConnectionInfo` (or its wire dict, ``{"driver_volume_type": ..., "data":
{...}}``) into one frozen dataclass per protocol. Connectors take these and never look at
dict keys; a missing or malformed key is reported here, once, by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from blockyard.backends.base import ConnectionInfo
from blockyard.errors import Invalid

AccessMode = Literal["rw", "ro"]


class ConnectionInfoError(Invalid):
    """The connection info is missing a key, or a key has the wrong shape."""


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


@dataclass(frozen=True)
class LocalInfo:
    protocol: ClassVar[str] = "local"

    device_path: str
    volume_id: str | None = None
    access_mode: AccessMode = "rw"


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


VolumeInfo = IscsiInfo | NbdInfo | LocalInfo | RbdInfo


def parse(connection_info: ConnectionInfo | Mapping[str, Any]) -> VolumeInfo:
    """Parse Cinder's connection info into the dataclass of its protocol."""
    data: Any
    if isinstance(connection_info, ConnectionInfo):
        tag, data = connection_info.driver_volume_type, connection_info.data
    else:
        if "driver_volume_type" not in connection_info:
            raise ConnectionInfoError("connection_info has no driver_volume_type.")
        tag, data = connection_info["driver_volume_type"], connection_info.get("data")
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


_PARSERS: dict[str, Callable[[_Fields], VolumeInfo]] = {
    "iscsi": _parse_iscsi,
    "nbd": _parse_nbd,
    "local": _parse_local,
    "rbd": _parse_rbd,
}
