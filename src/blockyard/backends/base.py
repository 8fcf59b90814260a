"""The driver contract: what every backend implements, and the values it exchanges.

Drivers do storage work only. They never see the database or HTTP: they take frozen references
(`VolumeRef`, `SnapshotRef`, `Connector`, from `blockyard.model`) and return frozen results
(`ModelUpdate`, a typed `ConnectionInfo`, `BackendStats`); the volume service persists what
they return. Every method is synchronous and
runs on a worker thread of its backend.

Every mutating method must be idempotent, because a durable task that was interrupted by a crash
is simply run again on restart: creating a volume that already exists recreates it, deleting one
that is gone succeeds, extending to the current size does nothing.

The export calls follow the seeds: `create_export(volume, connector)` does the export work once
per connector and returns what must be stored; `initialize_connection` only formats what was
stored and may be called any number of times; `export_of` tells the service what an export
allows without the service decoding provider_location itself.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from blockyard.errors import NotSupported
from blockyard.model import (
    ConnectionInfo,
    Connector,
    Export,
    ModelUpdate,
    OpenMode,
    SnapshotRef,
    Target,
    VolumeRef,
)


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

    def staged_snapshot(
        self, snapshot: SnapshotRef
    ) -> AbstractContextManager[Callable[[], ModelUpdate | None]]: ...

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

    def export_of(self, volume: VolumeRef) -> Export | None: ...

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

    def __init__(self, backend_name: str, options: dict[str, Any], target: Target) -> None:
        self.backend_name = backend_name
        self.options = options
        #: how volumes are exported (drivers with native protocols may ignore it); the
        #: service composes each driver with its target
        self.target = target

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

    @contextmanager
    def staged_snapshot(
        self, snapshot: SnapshotRef
    ) -> Iterator[Callable[[], ModelUpdate | None]]:
        """`create_snapshot` in stages, for a snapshot whose volume's users are paused
        meanwhile (an attached volume: `blockyard.service.assisted_snapshots`), so that they
        are paused for as short as possible. Entering prepares what can be prepared before;
        the callable it yields takes the snapshot's instant, the only part that runs while
        they are paused; leaving makes the snapshot durable, after they run again. The
        snapshot exists, complete and durable, only once the block exited without error
        (the callable must have been called). Default: all of `create_snapshot` at the
        instant."""
        yield lambda: self.create_snapshot(snapshot)

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

    def export_of(self, volume: VolumeRef) -> Export | None:
        """The export persisted with `volume` (in its provider_location, which only the driver
        reads), or None: not exported, or connected natively without an export."""
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
