"""The rbd connector: Ceph RBD images through librbd, in userspace (no ``rbd map``).

`open` gives an `RbdHandle` (`blockyard.rbdimage`, shared with the rbd backend driver) on a
cluster connection of its own, made from the connection info's monitors, user and key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:  # Debian's python3-rados/python3-rbd (scripts/setup.sh); the other connectors work without
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the packages are part of the setup
    rados = rbd = None

from blockyard.errors import ConnectorError
from blockyard.model import OpenMode, RbdInfo
from blockyard.rbdimage import CONNECTION_CONF, RbdHandle

from .base import Device, check_mode


def connect_cluster(info: RbdInfo, timeout: float = 10.0) -> Any:
    """A connected ``rados.Rados`` for `info`: its monitors, user and key (no conf file is
    needed when the key travels in the info)."""
    if rados is None:
        raise ConnectorError("the rbd connector needs python3-rados and python3-rbd")
    # Rados.connect ignores its timeout argument: client_mount_timeout is what bounds it
    # (a wrong key would otherwise hang for the default 300 s)
    conf: dict[str, str] = {"mon_host": info.mon_host,
                            "client_mount_timeout": str(max(1, round(timeout))),
                            **CONNECTION_CONF}
    if info.key:
        conf["key"] = info.key
    if not info.auth_enabled:
        conf["auth_client_required"] = "none"
    cluster = rados.Rados(rados_id=info.auth_username or "admin", clustername=info.cluster_name,
                          conf=conf)
    try:
        if not info.key:  # no key handed over: this host's conf and keyring must have it
            cluster.conf_read_file()
            cluster.conf_set("mon_host", info.mon_host)
        cluster.connect(timeout=timeout)
    except rados.Error as exc:
        cluster.shutdown()
        raise ConnectorError(f"cannot connect to the Ceph cluster of {info.name} "
                             f"({info.mon_host}): {exc}") from exc
    return cluster


def open_image(info: RbdInfo, writable: bool, timeout: float = 10.0) -> RbdHandle:
    """Connect and open `info`'s image; the handle owns the connection."""
    cluster = connect_cluster(info, timeout)
    closers: list[Callable[[], object]] = [cluster.shutdown]
    try:
        ioctx = cluster.open_ioctx(info.pool)
        closers.insert(0, ioctx.close)
        image = rbd.Image(ioctx, info.image, snapshot=info.snapshot,
                          read_only=not writable or info.snapshot is not None)
    except (rados.Error, rbd.Error) as exc:
        for close in closers:
            close()
        raise ConnectorError(f"cannot open rbd image {info.name}: {exc}") from exc
    return RbdHandle(image, writable, f"rbd:{info.name}", tuple(closers))


class RbdConnector:
    """Nothing is mapped on the host: QEMU and the handles speak librbd directly."""

    protocol = "rbd"

    def __init__(self, properties: dict[str, Any] | None = None, *,
                 connect_timeout: float = 10.0, **_: Any) -> None:
        self._properties = dict(properties or {})
        #: seconds to reach the monitors and authenticate (a wrong key fails only then)
        self.connect_timeout = connect_timeout

    def get_connector_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    def connect_volume(self, info: RbdInfo) -> Device:
        """Check that the image opens with the credentials given; the device is its name
        (``rbd:pool/image``; the secrets stay in the info, never in a path)."""
        with open_image(info, False, self.connect_timeout) as handle:
            return Device(path=f"rbd:{info.name}", size=handle.size)

    def disconnect_volume(self, info: RbdInfo, device: Device, force: bool = False) -> None:
        """Nothing was mapped, so nothing is torn down."""

    def extend_volume(self, info: RbdInfo) -> int:
        """The image's current size (librbd clients see a resize at once)."""
        with open_image(info, False, self.connect_timeout) as handle:
            return handle.size

    def open(self, info: RbdInfo, mode: OpenMode = "rb") -> RbdHandle:
        return open_image(info, check_mode(info, mode), self.connect_timeout)
