"""The rbd "target": Ceph serves RBD images itself, so there is nothing to export.

A backend with ``driver = "rbd"`` names ``target = "rbd"``; the driver formats native
``driver_volume_type: rbd`` connection info without calling the target. This class exists so
the runtime knows the protocol's properties (no daemon; a resize is seen by attached librbd
clients at once), and so a file-backed volume configured with it fails clearly instead of
being exported as something it is not.
"""

from __future__ import annotations

from collections.abc import Iterable

from blockyard.errors import Invalid
from blockyard.model import ConnectionInfo, Connector, Export, VolumeRef

PROTOCOL = "rbd"


class RbdTarget:
    """No daemon and no export: RBD volumes are reached through the Ceph monitors."""

    protocol = PROTOCOL
    #: QEMU's rbd driver (and every librbd client) picks up an image's new size
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
        """Any connector will do: access is the cephx key's."""

    def _only_rbd(self) -> Invalid:
        return Invalid("The rbd target serves only volumes of the rbd driver, which connects "
                       "natively; use another target for this backend.")

    def export(self, volume: VolumeRef, path: str, connector: Connector,
               existing: Export | None) -> Export:
        raise self._only_rbd()

    def ensure(self, volume: VolumeRef, path: str, export: Export) -> Export:
        raise self._only_rbd()

    def unexport(self, volume: VolumeRef, export: Export, connector: Connector | None) -> Export:
        return export

    def remove(self, volume: VolumeRef, export: Export) -> None:
        """Nothing to remove."""

    def connection_info(self, volume: VolumeRef, export: Export,
                        connector: Connector) -> ConnectionInfo:
        raise self._only_rbd()

    def exports(self) -> list[str]:
        return []
