"""The default backend: every volume and snapshot is a sparse raw file in one directory.

Layout: ``<path>/volume-<id>`` and ``<path>/snapshot-<id>``; nothing else is stored, so the
directory listing is the backend's whole state. Files are thin (only written extents are
allocated), and copies (snapshots, clones, volumes from snapshots) copy only allocated extents.

Crash safety: a new file is written under ``.tmp-<name>-<random>`` in the same directory, fsynced,
renamed into place and the directory fsynced, so a final name either holds a complete file or
does not exist. Leftover ``.tmp-*`` files of an interrupted run are removed by `do_setup`.
Because the task that was interrupted is rerun after a restart, every mutating call is idempotent:
creation rewrites the destination from scratch, deletion of a missing file succeeds, and
extension to a size not above the current one does nothing.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from blockyard.backends.base import BackendStats, DriverBase, DriverInfo, PoolStats
from blockyard.backends.exports import TargetExports
from blockyard.backends.sparse import copy_sparse
from blockyard.errors import BackendError, ConfigError, Invalid
from blockyard.model import GiB, ModelUpdate, OpenMode, SnapshotRef, Target, VolumeRef

TMP_PREFIX = ".tmp-"


class FileDriver(TargetExports, DriverBase):
    """Sparse raw files in a local directory, exported by the backend's target (plain paths,
    iSCSI through tgt or NBD through qemu-nbd)."""

    def __init__(self, backend_name: str, options: dict[str, Any],
                 target: Target) -> None:
        super().__init__(backend_name, options, target)
        path = options.get("path")
        if not path or not isinstance(path, (str, os.PathLike)):
            raise ConfigError(
                self._key("path"), "required: the directory that holds the volume files"
            )
        self.path = os.path.abspath(os.fspath(path))
        self.total_capacity_gb: float | None = None
        if options.get("total_capacity_gb") is not None:
            self.total_capacity_gb = self._number("total_capacity_gb", minimum=0.0)
        self.reserved_percentage = int(self._number("reserved_percentage", 0, 0.0, 100.0))
        self.max_over_subscription_ratio = self._number("max_over_subscription_ratio", 20.0, 1.0)

    # configuration helpers

    def _key(self, option: str) -> str:
        return f"backends.{self.backend_name}.{option}"

    def _number(
        self,
        option: str,
        default: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """Read a numeric option; configuration files may hand over numbers or strings."""
        raw = self.options.get(option, default)
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigError(self._key(option), f"must be a number, got {raw!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigError(
                self._key(option), f"must be within [{minimum}, {maximum}], got {value}"
            )
        return value

    # paths and durable file operations

    def _file(self, name: str) -> str:
        """The path of a backend object; refuses names that could escape the directory."""
        if not name or "/" in name or "\0" in name or name.startswith("."):
            raise Invalid(f"Invalid backend object name {name!r}.")
        return os.path.join(self.path, name)

    def volume_path(self, volume: VolumeRef) -> str:
        return self._file(volume.name)

    def snapshot_path(self, snapshot: SnapshotRef) -> str:
        return self._file(snapshot.name)

    def _fsync_dir(self) -> None:
        """Make renames and unlinks in the directory durable."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _new_file(self, name: str) -> Iterator[int]:
        """Yield the fd of a fresh temporary file that becomes `name` atomically on success.

        A fresh inode every time: a new volume can never show blocks of an older file, and a
        partially written destination of an earlier attempt is simply replaced.
        """
        final = self._file(name)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{name}-", dir=self.path)
        try:
            yield fd
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        os.close(fd)
        try:
            os.rename(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self._fsync_dir()

    def _open_source(self, path: str, what: str) -> int:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise BackendError(f"{what} file {path} does not exist.", exc) from exc

    def _copy_into(self, name: str, source: str, what: str, size: int | None = None) -> None:
        """Create `name` as a thin copy of `source`, grown to `size` bytes if given."""
        src = self._open_source(source, what)
        try:
            length = os.fstat(src).st_size
            if size is not None:
                if size < length:
                    raise Invalid(
                        f"Requested size {size // GiB} GiB is smaller than the source "
                        f"({length / GiB:g} GiB)."
                    )
                length = size
            with self._new_file(name) as dst:
                copy_sparse(src, dst, length)
        finally:
            os.close(src)

    def _delete(self, name: str) -> None:
        _unlink_quietly(self._file(name))
        self._fsync_dir()  # also when already gone: an earlier unlink may not be durable yet

    # the contract

    def info(self) -> DriverInfo:
        return DriverInfo(online_extend=True, multiattach=True, protocols=("local",), thin=True)

    def do_setup(self) -> None:
        """Create the directory and drop temporary files of interrupted operations.

        Runs before any operation of this process, and the directory belongs to this backend
        alone, so every ``.tmp-*`` file found is garbage.
        """
        os.makedirs(self.path, exist_ok=True)
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
                    _unlink_quietly(entry.path)
        self._fsync_dir()

    def get_stats(self) -> BackendStats:
        vfs = os.statvfs(self.path)
        fs_total = vfs.f_blocks * vfs.f_frsize
        fs_free = vfs.f_bavail * vfs.f_frsize
        allocated = provisioned = 0
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.name.startswith(TMP_PREFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while we listed
                    continue
                allocated += st.st_blocks * 512
                provisioned += st.st_size
        if self.total_capacity_gb is None:
            total, free = fs_total, fs_free
        else:
            # a configured cap: what is left of it, but never more than the disk has free
            total = int(self.total_capacity_gb * GiB)
            free = max(0, min(fs_free, total - allocated))
        pool = PoolStats(
            name=self.backend_name,
            total_capacity_gb=_gb(total),
            free_capacity_gb=_gb(free),
            allocated_capacity_gb=_gb(allocated),
            provisioned_capacity_gb=_gb(provisioned),
            thin_provisioning_support=True,
            thick_provisioning_support=False,
            max_over_subscription_ratio=self.max_over_subscription_ratio,
            reserved_percentage=self.reserved_percentage,
            multiattach=True,
        )
        return BackendStats(
            volume_backend_name=self.backend_name,
            vendor_name="blockyard",
            driver_version="1.0",
            storage_protocol=self.storage_protocol,
            pools=(pool,),
        )

    def create_volume(self, volume: VolumeRef) -> ModelUpdate | None:
        """A sparse file of the volume's size: allocates nothing until written."""
        with self._new_file(volume.name) as fd:
            os.ftruncate(fd, volume.size_bytes)
        return None

    def delete_volume(self, volume: VolumeRef) -> None:
        self._delete(volume.name)

    def extend_volume(self, volume: VolumeRef, new_size_gb: int) -> None:
        """Grow the file in place (safe while attached); a size not above the current is a no-op."""
        path = self.volume_path(volume)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError as exc:
            raise BackendError(f"Volume file {path} does not exist.", exc) from exc
        try:
            new_size = new_size_gb * GiB
            if new_size > os.fstat(fd).st_size:
                os.ftruncate(fd, new_size)
                os.fsync(fd)
        finally:
            os.close(fd)

    def create_snapshot(self, snapshot: SnapshotRef) -> ModelUpdate | None:
        """A thin full copy of the volume file (not point-in-time if it is written meanwhile)."""
        self._copy_into(snapshot.name, self.volume_path(snapshot.volume), "Volume")
        return None

    @contextmanager
    def staged_snapshot(self, snapshot: SnapshotRef) -> Iterator[Callable[[], None]]:
        """The sparse copy at the instant; the fsyncs of the copy and of the directory, which
        cost more than copying a few written MiB, after it. The copy reads the volume as it
        is at the instant (through the page cache), so it is point-in-time however late it
        reaches the disk; its final name appears only once it is durable."""
        src = self._open_source(self.volume_path(snapshot.volume), "Volume")
        taken = False
        try:
            with self._new_file(snapshot.name) as dst:
                def take() -> None:
                    nonlocal taken
                    copy_sparse(src, dst, os.fstat(src).st_size)
                    taken = True
                yield take
                if not taken:
                    raise BackendError(f"Snapshot {snapshot.id}: its copy was never made.")
        finally:
            os.close(src)

    def delete_snapshot(self, snapshot: SnapshotRef) -> None:
        self._delete(snapshot.name)

    def create_volume_from_snapshot(
        self, volume: VolumeRef, snapshot: SnapshotRef
    ) -> ModelUpdate | None:
        self._copy_into(volume.name, self.snapshot_path(snapshot), "Snapshot", volume.size_bytes)
        return None

    def create_cloned_volume(self, volume: VolumeRef, source: VolumeRef) -> ModelUpdate | None:
        self._copy_into(volume.name, self.volume_path(source), "Volume", volume.size_bytes)
        return None

    def list_volume_names(self) -> set[str]:
        with os.scandir(self.path) as entries:
            return {
                e.name
                for e in entries
                if not e.name.startswith(TMP_PREFIX) and e.is_file(follow_symlinks=False)
            }

    # exports: carried out by the backend's target (TargetExports)

    def export_path(self, volume: VolumeRef) -> str:
        return self.volume_path(volume)

    # data access

    def open_volume(self, volume: VolumeRef, mode: OpenMode = "rb") -> io.RawIOBase:
        """The volume file itself, unbuffered, so callers' reads and writes hit it directly."""
        if mode not in ("rb", "r+b"):
            raise Invalid(f"Unsupported open mode {mode!r}.")
        path = self.volume_path(volume)
        try:
            return open(path, mode, buffering=0)
        except FileNotFoundError as exc:
            raise BackendError(f"Volume file {path} does not exist.", exc) from exc

    def close_volume(self, volume: VolumeRef, handle: io.RawIOBase) -> None:
        """Close, making writes durable first: a copy is only done once it is on disk."""
        if handle.closed:
            return
        try:
            if handle.writable():
                os.fsync(handle.fileno())
        finally:
            handle.close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _gb(nbytes: int) -> float:
    return round(nbytes / GiB, 2)
