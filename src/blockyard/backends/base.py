"""The driver contract: what every backend implements, and the values it exchanges.

Drivers do storage work only. They never see the database or HTTP: they take frozen references
(`VolumeRef`, `SnapshotRef`, `Connector`) and return frozen results (`ModelUpdate`,
`BackendStats`); the volume service persists what they return. Every method is synchronous and
runs on a worker thread of its backend.

Every mutating method must be idempotent, because a durable task that was interrupted by a crash
is simply run again on restart: creating a volume that already exists recreates it, deleting one
that is gone succeeds, extending to the current size does nothing.

The export calls follow the seeds: `create_export(volume, connector)` does the export work once
per connector and returns what must be stored; `initialize_connection` only formats what was
stored and may be called any number of times.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from blockyard.errors import NotSupported

if TYPE_CHECKING:
    from blockyard.targets.base import Target

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


@dataclass(frozen=True)
class ConnectionInfo:
    """Cinder's ``connection_info``: a protocol tag and its data."""

    driver_volume_type: str
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"driver_volume_type": self.driver_volume_type, "data": dict(self.data)}


@dataclass(frozen=True)
class PoolStats:
    """One pool's capacity, as get_pools reports it."""

    name: str
    total_capacity_gb: float
    free_capacity_gb: float
    allocated_capacity_gb: float = 0.0
    provisioned_capacity_gb: float = 0.0
    thin_provisioning_support: bool = True
    thick_provisioning_support: bool = False
    max_over_subscription_ratio: float = 20.0
    reserved_percentage: int = 0
    multiattach: bool = True


@dataclass(frozen=True)
class BackendStats:
    """A backend's report: identity plus its pools."""

    volume_backend_name: str
    vendor_name: str
    driver_version: str
    storage_protocol: str
    pools: tuple[PoolStats, ...]


@dataclass(frozen=True)
class DriverInfo:
    """What a driver can do. Callers branch on these flags, never on the driver's class."""

    #: extend_volume works while the volume is attached
    online_extend: bool = False
    #: one volume may be exported to several connectors at once
    multiattach: bool = False
    #: export protocols this backend can serve
    protocols: tuple[str, ...] = ("local",)
    #: volumes allocate space only where written
    thin: bool = True


class VolumeDriver(Protocol):
    """The contract of a backend driver (see the module docstring)."""

    def info(self) -> DriverInfo: ...

    def do_setup(self) -> None: ...

    def get_stats(self) -> BackendStats: ...

    # volumes and snapshots
    def create_volume(self, volume: VolumeRef) -> ModelUpdate | None: ...

    def delete_volume(self, volume: VolumeRef) -> None: ...

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> None: ...

    def create_snapshot(self, snapshot: SnapshotRef) -> ModelUpdate | None: ...

    def delete_snapshot(self, snapshot: SnapshotRef) -> None: ...

    def create_volume_from_snapshot(
        self, volume: VolumeRef, snapshot: SnapshotRef
    ) -> ModelUpdate | None: ...

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> ModelUpdate | None: ...

    def list_volume_names(self) -> set[str]: ...

    # exports and connections
    def validate_connector(self, connector: Connector) -> None: ...

    def create_export(self, volume: VolumeRef, connector: Connector) -> ModelUpdate | None: ...

    def ensure_export(self, volume: VolumeRef) -> ModelUpdate | None: ...

    def remove_export(self, volume: VolumeRef) -> None: ...

    def initialize_connection(self, volume: VolumeRef, connector: Connector) -> ConnectionInfo: ...

    def terminate_connection(
        self, volume: VolumeRef, connector: Connector | None, force: bool = False
    ) -> ModelUpdate | None: ...

    # data access for copies
    def open_volume(self, volume: VolumeRef, mode: OpenMode = "rb") -> io.RawIOBase: ...

    def close_volume(self, volume: VolumeRef, handle: io.RawIOBase) -> None: ...


#: what get_pools reports as `storage_protocol` for each export target (Cinder's names)
STORAGE_PROTOCOLS = {"iscsi": "iSCSI", "nbd": "nbd", "local": "local", "rbd": "ceph"}


class DriverBase:
    """Defaults for the optional parts of the contract: each raises `NotSupported`.

    A driver subclasses this and overrides what it supports, as Incus's drivers embed `common`.
    """

    def __init__(self, backend_name: str, options: dict[str, Any],
                 target: Target | None = None) -> None:
        self.backend_name = backend_name
        self.options = options
        #: how volumes are exported (drivers with native protocols may ignore it)
        if target is None:
            from blockyard.targets.local import LocalTarget  # targets import this module

            target = LocalTarget()
        self.target: Target = target

    def info(self) -> DriverInfo:
        return DriverInfo()

    @property
    def storage_protocol(self) -> str:
        """The protocol initiators reach this backend's volumes by: its target's."""
        protocol = self.target.protocol
        return STORAGE_PROTOCOLS.get(protocol, protocol)

    def do_setup(self) -> None:
        """Prepare the backend (create directories, connect to clusters). Idempotent."""

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{type(self).__name__} does not support {what}.")

    def create_snapshot(self, snapshot: SnapshotRef) -> ModelUpdate | None:
        raise self._unsupported("snapshots")

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        raise self._unsupported("snapshots")

    def create_volume_from_snapshot(
        self, volume: VolumeRef, snapshot: SnapshotRef
    ) -> ModelUpdate | None:
        raise self._unsupported("volumes from snapshots")

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> ModelUpdate | None:
        raise self._unsupported("cloning volumes")

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> None:
        raise self._unsupported("extending volumes")

    def list_volume_names(self) -> set[str]:
        """Names of every volume/snapshot object on the backend, for orphan sweeps."""
        raise self._unsupported("listing volumes")

    def validate_connector(self, connector: Connector) -> None:
        """Raise `Invalid` when the connector lacks what this backend's protocol needs."""

    def create_export(self, volume: VolumeRef, connector: Connector) -> ModelUpdate | None:
        return None

    def ensure_export(self, volume: VolumeRef) -> ModelUpdate | None:
        """Re-create a persisted export after a restart (targets keep no state)."""
        return None

    def remove_export(self, volume: VolumeRef) -> None:
        return None

    def initialize_connection(self, volume: VolumeRef, connector: Connector) -> ConnectionInfo:
        raise self._unsupported("connections")

    def terminate_connection(
        self, volume: VolumeRef, connector: Connector | None, force: bool = False
    ) -> ModelUpdate | None:
        """Stop allowing `connector` (None: everyone); returns what to persist, if anything."""
        return None

    def open_volume(self, volume: VolumeRef, mode: OpenMode = "rb") -> io.RawIOBase:
        raise self._unsupported("opening volumes")

    def close_volume(self, volume: VolumeRef, handle: io.RawIOBase) -> None:
        handle.close()
