"""blockyard's os-brick: attach volumes to this host and read/write them, in userspace.

Shared by the volume service (data copies) and the compute agent. The pieces:

- `properties.get_connector_properties()`: this host's initiator properties (the connector
  dict sent on attach); `properties.to_connector()` makes the typed `Connector` of it.
- `info.parse(connection_info)`: Cinder's connection info, checked once, into `IscsiInfo`,
  `NbdInfo`, `LocalInfo` or `RbdInfo`.
- `connector_for(info, properties)`: the connector of that protocol, with four verbs
  (`get_connector_properties`, `connect_volume -> Device`, `disconnect_volume`,
  `extend_volume -> int`) and `open(info, mode) -> VolumeHandle`, a raw seekable file with
  `size` and `extents()`.

No kernel module is used: local paths are opened directly, NBD goes through libnbd, iSCSI
through a qemu-nbd bridge running QEMU's libiscsi driver, Ceph RBD through librbd.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from blockyard.backends.base import ConnectionInfo

from .base import (
    ConnectorError,
    Device,
    Extent,
    LoginRefused,
    VolumeConnector,
    VolumeHandle,
)
from .info import (
    ConnectionInfoError,
    IscsiInfo,
    LocalInfo,
    NbdInfo,
    RbdInfo,
    VolumeInfo,
    parse,
)
from .iscsi import IscsiConnector
from .local import LocalConnector
from .nbd import NbdConnector
from .properties import get_connector_properties, to_connector
from .rbd import RbdConnector, RbdHandle

CONNECTORS: dict[str, type[IscsiConnector] | type[NbdConnector] | type[LocalConnector]
                 | type[RbdConnector]] = {
    "iscsi": IscsiConnector,
    "nbd": NbdConnector,
    "local": LocalConnector,
    "rbd": RbdConnector,
}


def connector_for(
    info: VolumeInfo | ConnectionInfo | Mapping[str, Any],
    properties: dict[str, Any] | None = None,
    **options: Any,
) -> VolumeConnector:
    """The connector for `info`'s protocol (parsing `info` first when it is not typed yet).
    `properties` are this host's (`get_connector_properties`); `options` go to the
    connector's constructor (e.g. ``run_dir`` for iSCSI bridges)."""
    if not isinstance(info, IscsiInfo | NbdInfo | LocalInfo | RbdInfo):
        info = parse(info)
    return CONNECTORS[info.protocol](properties, **options)


__all__ = [
    "CONNECTORS",
    "ConnectionInfoError",
    "ConnectorError",
    "Device",
    "Extent",
    "IscsiConnector",
    "IscsiInfo",
    "LocalConnector",
    "LocalInfo",
    "LoginRefused",
    "NbdConnector",
    "NbdInfo",
    "RbdConnector",
    "RbdHandle",
    "RbdInfo",
    "VolumeConnector",
    "VolumeHandle",
    "VolumeInfo",
    "connector_for",
    "get_connector_properties",
    "parse",
    "to_connector",
]
