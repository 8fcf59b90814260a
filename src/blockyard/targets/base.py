"""The target contract: export a volume's backing path to one connector at a time.

`export` does all the export work for one connector, once (the seed: create_export receives
the connector) and returns an `Export` that the volume service persists; `connection_info`
only formats a persisted `Export` and must have no side effects (it is called again and
again). After a restart, `ensure` re-creates what the target daemon forgot (tgtd keeps no
state; qemu-nbd processes are gone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # only annotations: importing blockyard.backends here would be a cycle
    from blockyard.backends.base import ConnectionInfo, Connector, VolumeRef


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
    """One export protocol, with the daemons it supervises."""

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
