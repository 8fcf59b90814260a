"""The local target: the volume's path itself, for a consumer on the same host."""

from __future__ import annotations

from collections.abc import Iterable

from blockyard.model import Connector, Export, LocalInfo, VolumeRef

PROTOCOL = "local"


class LocalTarget:
    """No daemon, no access control beyond the file's permissions: the path is the export."""

    protocol = PROTOCOL
    #: the consumer opens the file itself, and QEMU's block_resize grows its disk
    online_resize = True
    online_resize_blocker = ""

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Nothing to stop."""

    def teardown(self) -> None:
        """Nothing to stop."""

    def prune(self, keep: Iterable[Export]) -> list[str]:
        """Nothing runs, so nothing is stale."""
        return []

    def validate_connector(self, connector: Connector) -> None:
        """Any connector will do: a local path needs no initiator identity."""

    def export(self, volume: VolumeRef, path: str, connector: Connector,
               existing: Export | None) -> Export:
        hosts = set(existing.connectors if existing else ())
        if connector.host:
            hosts.add(connector.host)
        return Export(PROTOCOL, {"device_path": path}, {}, tuple(sorted(hosts)))

    def ensure(self, volume: VolumeRef, path: str, export: Export) -> Export:
        return Export(PROTOCOL, {"device_path": path}, {}, export.connectors)

    def unexport(self, volume: VolumeRef, export: Export, connector: Connector | None) -> Export:
        left = () if connector is None else tuple(h for h in export.connectors
                                                  if h != connector.host)
        return Export(PROTOCOL, dict(export.data), {}, left)

    def remove(self, volume: VolumeRef, export: Export) -> None:
        """Nothing to remove."""

    def connection_info(self, volume: VolumeRef, export: Export,
                        connector: Connector) -> LocalInfo:
        return LocalInfo(device_path=export.data["device_path"], volume_id=volume.id,
                         access_mode="rw")

    def exports(self) -> list[str]:
        return []
