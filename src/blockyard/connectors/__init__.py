"""blockyard's os-brick: attach volumes to this host and read/write them, in userspace.

Shared by the volume service (data copies) and the compute agent. The pieces:

- `properties.get_connector_properties()`: this host's initiator properties (the connector
  dict sent on attach); `properties.to_connector()` makes the typed `Connector` of it.
- `blockyard.model.parse(connection_info)`: Cinder's connection info, checked once, into
  `IscsiInfo`, `NbdInfo`, `LocalInfo` or `RbdInfo` (their union is `ConnectionInfo`).
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

from blockyard.model import ConnectionInfo, parse

from .base import Device, LoginRefused, VolumeConnector
from .iscsi import IscsiConnector
from .local import LocalConnector
from .nbd import NbdConnector
from .properties import get_connector_properties, to_connector
from .rbd import RbdConnector

CONNECTORS: dict[str, type[IscsiConnector] | type[NbdConnector] | type[LocalConnector]
                 | type[RbdConnector]] = {
    "iscsi": IscsiConnector,
    "nbd": NbdConnector,
    "local": LocalConnector,
    "rbd": RbdConnector,
}


def connector_for(
    info: ConnectionInfo | Mapping[str, Any],
    properties: dict[str, Any] | None = None,
    **options: Any,
) -> VolumeConnector:
    """The connector for `info`'s protocol (parsing `info` first when it is not typed yet).
    `properties` are this host's (`get_connector_properties`); `options` go to the
    connector's constructor (e.g. ``run_dir`` for iSCSI bridges)."""
    return CONNECTORS[parse(info).protocol](properties, **options)


__all__ = [
    "CONNECTORS",
    "Device",
    "IscsiConnector",
    "LocalConnector",
    "LoginRefused",
    "NbdConnector",
    "RbdConnector",
    "VolumeConnector",
    "connector_for",
    "get_connector_properties",
    "to_connector",
]
