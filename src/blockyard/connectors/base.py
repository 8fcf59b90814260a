"""The connector contract: `VolumeConnector`, the `Device` it returns, and `LoginRefused`.

A connector (one class per protocol, see `blockyard.connectors`) has four methods,
`get_connector_properties`, `connect_volume(info) -> Device`, `disconnect_volume(info, device,
force=False)` and `extend_volume(info) -> int`, plus `open(info, mode) -> VolumeHandle` for
data copies. `VolumeHandle` (in `blockyard.model`, since backends hand out handles too) is a
raw, seekable, fixed-size file: it never grows, and `extents()` tells data from holes where
the protocol knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from blockyard.errors import ConnectorError
from blockyard.model import ConnectionInfo, OpenMode, VolumeHandle


class LoginRefused(ConnectorError):
    """The target refused us: wrong credentials, or an initiator it does not allow."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: "auth" (bad CHAP), "acl" (initiator not allowed / target not found), or "other"
        self.reason = reason


@dataclass(frozen=True)
class Device:
    """An attached volume as this host sees it.

    `path` is a filesystem path when there is one (a local file or block device); for the
    userspace protocols it is a URI QEMU and qemu-img open directly
    (``nbd+unix:///export?socket=...``, ``nbd://host:port/export``).
    """

    path: str
    size: int
    #: the qemu-nbd bridge serving `path` (iSCSI in userspace); None when there is none
    bridge_pid: int | None = None
    #: the bridge's private directory (socket, log); removed on disconnect
    bridge_dir: str | None = None


class VolumeConnector(Protocol):
    """The contract of one protocol's connector."""

    protocol: str

    def get_connector_properties(self) -> dict[str, Any]: ...

    def connect_volume(self, info: Any) -> Device: ...

    def disconnect_volume(self, info: Any, device: Device, force: bool = False) -> None: ...

    def extend_volume(self, info: Any) -> int: ...

    def open(self, info: Any, mode: OpenMode = "rb") -> VolumeHandle: ...


def check_mode(info: ConnectionInfo, mode: str) -> bool:
    """Validate an open mode against the info's access mode; True when writable."""
    if mode not in ("rb", "r+b"):
        raise ValueError(f"mode must be 'rb' or 'r+b', not {mode!r}")
    writable = mode == "r+b"
    if writable and info.access_mode == "ro":
        raise ConnectorError(f"volume {info.volume_id} is attached read-only; cannot open "
                             f"it {mode!r}")
    return writable
