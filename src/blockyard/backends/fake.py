"""An in-memory driver, for tests: the whole driver contract in a few dicts, no disk, no daemon.

It honours the same contract as the real drivers (tests/contract/test_driver.py runs the same
tests over it, `file` and `rbd`): idempotent mutations, point-in-time snapshots, thin volumes
that read zeros where never written, exports once per connector persisted in the volume's
provider_location, and `initialize_connection` that only formats what was persisted. Fast tests
use it directly; a ``blockyard serve`` configured with ``driver = "fake"`` uses it too (its
volumes live as long as that process).

Options: ``total_capacity_gb`` (default 1000), and the capability flags ``online_extend`` and
``multiattach`` (default true): with a flag false, `info()` says so and the driver raises
`NotSupported` for what the flag forbids (extending an exported volume; exporting to a second
connector), as a real backend without the capability would.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from blockyard.backends.base import BackendStats, DriverBase, DriverInfo, PoolStats
from blockyard.errors import BackendError, ConfigError, Invalid, NotSupported
from blockyard.model import (
    Connector,
    Export,
    Extent,
    GiB,
    LocalInfo,
    ModelUpdate,
    OpenMode,
    SnapshotRef,
    Target,
    VolumeHandle,
    VolumeRef,
)

#: the allocation unit: a write allocates the blocks it touches, nothing else
BLOCK = 64 * 1024
#: the scheme of its device paths and the protocol of its exports (nothing connects to memory)
PROTOCOL = "fake"
#: provider_location prefix of an export: ``fake:<host>,<host>`` (never JSON, so nothing
#: mistakes it for a target's export)
_EXPORT = "fake:"
_OPTIONS = {"total_capacity_gb", "online_extend", "multiattach"}


@dataclass
class _Blob:
    """One volume or snapshot: its size and the blocks ever written (a missing one is zeros)."""

    size: int
    blocks: dict[int, bytearray] = field(default_factory=dict)

    def copy(self, size: int | None = None) -> _Blob:
        return _Blob(self.size if size is None else size,
                     {i: bytearray(b) for i, b in self.blocks.items()})


class FakeDriver(DriverBase):
    """Volumes and snapshots as blocks in memory; exports as a table of connector hosts."""

    def __init__(self, backend_name: str, options: dict[str, Any],
                 target: Target) -> None:
        super().__init__(backend_name, options, target)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(f"backends.{backend_name}.{unknown[0]}",
                              "unknown option of the fake driver")
        if self.target.protocol != "local":
            raise ConfigError(f"backends.{backend_name}.target",
                              "the fake driver exports nothing through a target")
        self.total_capacity_gb = float(options.get("total_capacity_gb", 1000))
        self.online_extend = bool(options.get("online_extend", True))
        self.multiattach = bool(options.get("multiattach", True))
        self._lock = threading.RLock()
        #: backend object name (``volume-…``, ``snapshot-…``) -> its blocks
        self.objects: dict[str, _Blob] = {}
        #: volume name -> hosts it is exported to: the live state a target would hold
        self.exports: dict[str, set[str]] = {}

    # helpers

    def _get(self, name: str, what: str) -> _Blob:
        try:
            return self.objects[name]
        except KeyError:
            raise BackendError(f"{what} {name} does not exist on {self.backend_name}.") from None

    def _copy_into(self, name: str, source: _Blob, size: int) -> None:
        if size < source.size:
            raise Invalid(f"Requested size {size // GiB} GiB is smaller than the source "
                          f"({source.size / GiB:g} GiB).")
        self.objects[name] = source.copy(size)

    # the contract

    def info(self) -> DriverInfo:
        return DriverInfo(online_extend=self.online_extend, multiattach=self.multiattach,
                          protocols=(PROTOCOL,), thin=True)

    @property
    def storage_protocol(self) -> str:
        return PROTOCOL

    def get_stats(self) -> BackendStats:
        with self._lock:
            allocated = sum(len(b.blocks) * BLOCK for b in self.objects.values())
            provisioned = sum(b.size for b in self.objects.values())
        total = self.total_capacity_gb * GiB
        pool = PoolStats(
            name=self.backend_name,
            total_capacity_gb=self.total_capacity_gb,
            free_capacity_gb=round(max(0.0, total - allocated) / GiB, 2),
            allocated_capacity_gb=round(allocated / GiB, 2),
            provisioned_capacity_gb=round(provisioned / GiB, 2),
            multiattach=self.multiattach,
        )
        return BackendStats(volume_backend_name=self.backend_name, vendor_name="blockyard",
                            driver_version="1.0", storage_protocol=PROTOCOL, pools=(pool,))

    def create_volume(self, volume: VolumeRef) -> ModelUpdate | None:
        with self._lock:
            self.objects[volume.name] = _Blob(volume.size_bytes)
        return None

    def delete_volume(self, volume: VolumeRef) -> None:
        with self._lock:
            self.objects.pop(volume.name, None)
            self.exports.pop(volume.name, None)

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> None:
        with self._lock:
            blob = self._get(volume.name, "Volume")
            if not self.online_extend and self.exports.get(volume.name):
                raise NotSupported(f"{self.backend_name} cannot extend an exported volume.")
            blob.size = max(blob.size, new_size_gb * GiB)

    def create_snapshot(self, snapshot: SnapshotRef) -> ModelUpdate | None:
        with self._lock:
            self.objects[snapshot.name] = self._get(snapshot.volume.name, "Volume").copy()
        return None

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        with self._lock:
            self.objects.pop(snapshot.name, None)

    def create_volume_from_snapshot(self, volume: VolumeRef,
                                    snapshot: SnapshotRef) -> ModelUpdate | None:
        with self._lock:
            self._copy_into(volume.name, self._get(snapshot.name, "Snapshot"),
                            volume.size_bytes)
        return None

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> ModelUpdate | None:
        with self._lock:
            self._copy_into(volume.name, self._get(source.name, "Volume"), volume.size_bytes)
        return None

    def list_volume_names(self) -> set[str]:
        with self._lock:
            return set(self.objects)

    # exports: the hosts are persisted in provider_location and mirrored in `exports`

    def create_export(self, volume: VolumeRef, connector: Connector) -> ModelUpdate | None:
        with self._lock:
            self._get(volume.name, "Volume")
            hosts = _hosts(volume) | self.exports.get(volume.name, set())
            host = {connector.host} if connector.host else set()
            if not self.multiattach and hosts - host:
                raise NotSupported(f"{self.backend_name} exports a volume to one connector.")
            hosts |= host
            self.exports[volume.name] = hosts
        return ModelUpdate(provider_location=_EXPORT + ",".join(sorted(hosts)))

    def ensure_export(self, volume: VolumeRef) -> ModelUpdate | None:
        if not (volume.provider_location or "").startswith(_EXPORT):
            return None
        with self._lock:
            self.exports[volume.name] = _hosts(volume)
        return ModelUpdate(provider_location=volume.provider_location)

    def remove_export(self, volume: VolumeRef) -> None:
        with self._lock:
            self.exports.pop(volume.name, None)

    def export_of(self, volume: VolumeRef) -> Export | None:
        """The persisted export: the connector hosts allowed, nothing else."""
        if not (volume.provider_location or "").startswith(_EXPORT):
            return None
        return Export(PROTOCOL, {}, connectors=tuple(sorted(_hosts(volume))))

    def initialize_connection(self, volume: VolumeRef, connector: Connector) -> LocalInfo:
        """Only formats the persisted export: no side effects, any number of calls. A local
        path no host can open (``fake://backend/volume-…``): nothing connects to memory."""
        if not (volume.provider_location or "").startswith(_EXPORT):
            raise BackendError(f"Volume {volume.id} is not exported; create_export first.")
        return LocalInfo(device_path=f"{PROTOCOL}://{self.backend_name}/{volume.name}",
                         volume_id=volume.id)

    def terminate_connection(self, volume: VolumeRef, connector: Connector | None,
                             force: bool = False) -> ModelUpdate | None:
        if not (volume.provider_location or "").startswith(_EXPORT):
            return None
        with self._lock:
            left = set() if connector is None else _hosts(volume) - {connector.host}
            if volume.name in self.exports:
                self.exports[volume.name] = set(left)
        return ModelUpdate(provider_location=_EXPORT + ",".join(sorted(left)))

    # data access

    def open_volume(self, volume: VolumeRef, mode: OpenMode = "rb") -> io.RawIOBase:
        if mode not in ("rb", "r+b"):
            raise Invalid(f"Unsupported open mode {mode!r}.")
        with self._lock:
            blob = self._get(volume.name, "Volume")
        return MemoryHandle(blob, self._lock, mode == "r+b", f"fake:{volume.name}")


def _hosts(volume: VolumeRef) -> set[str]:
    """The connector hosts persisted in the volume's provider_location."""
    location = volume.provider_location or ""
    if not location.startswith(_EXPORT):
        return set()
    return set(location[len(_EXPORT):].split(",")) - {""}


class MemoryHandle(VolumeHandle):
    """Positioned I/O on a `_Blob`; reports the written blocks as its data extents."""

    def __init__(self, blob: _Blob, lock: threading.RLock, writable: bool, name: str) -> None:
        super().__init__(blob.size, writable, name)
        self._blob = blob
        self._lock = lock

    def _pread(self, count: int, offset: int) -> bytes:
        out = bytearray(count)
        with self._lock:
            for index, start, piece in _pieces(offset, count):
                block = self._blob.blocks.get(index)
                if block is not None:
                    out[start:start + piece] = block[(offset + start) % BLOCK:
                                                     (offset + start) % BLOCK + piece]
        return bytes(out)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        with self._lock:
            for index, start, piece in _pieces(offset, len(view)):
                chunk = view[start:start + piece]
                block = self._blob.blocks.get(index)
                if block is None:
                    if not any(chunk):
                        continue  # zeros over a hole: stay thin
                    block = self._blob.blocks[index] = bytearray(BLOCK)
                at = (offset + start) % BLOCK
                block[at:at + piece] = chunk

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        self._checkClosed()
        end = self._size if length is None else min(self._size, offset + length)
        pos = offset
        with self._lock:
            written = sorted(i for i in self._blob.blocks if i * BLOCK < end
                             and (i + 1) * BLOCK > offset)
        for index in written:
            start, stop = max(index * BLOCK, offset), min((index + 1) * BLOCK, end)
            if start > pos:
                yield Extent(pos, start - pos, False)
            yield Extent(start, stop - start, True)
            pos = stop
        if pos < end:
            yield Extent(pos, end - pos, False)


def _pieces(offset: int, count: int) -> list[tuple[int, int, int]]:
    """(block index, start within the request, length) of each block a request touches."""
    out = []
    pos = 0
    while pos < count:
        index, within = divmod(offset + pos, BLOCK)
        piece = min(BLOCK - within, count - pos)
        out.append((index, pos, piece))
        pos += piece
    return out
