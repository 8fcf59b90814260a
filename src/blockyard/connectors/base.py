"""What every connector returns and hands out: `Device`, `VolumeHandle`, and their errors.

A connector (one class per protocol, see `blockyard.connectors`) has four methods,
`get_connector_properties`, `connect_volume(info) -> Device`, `disconnect_volume(info, device,
force=False)` and `extend_volume(info) -> int`, plus `open(info, mode) -> VolumeHandle` for
data copies. `VolumeHandle` is a raw, seekable, fixed-size file: it never grows, and
`extents()` tells data from holes where the protocol knows.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from blockyard.backends.base import OpenMode
from blockyard.errors import BackendError

from .info import VolumeInfo


class ConnectorError(BackendError):
    """Attaching, opening or detaching a volume failed on this host."""


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


class Extent(NamedTuple):
    offset: int
    length: int
    #: False: a hole (reads as zeros, allocates nothing)
    is_data: bool


class VolumeConnector(Protocol):
    """The contract of one protocol's connector."""

    protocol: str

    def get_connector_properties(self) -> dict[str, Any]: ...

    def connect_volume(self, info: Any) -> Device: ...

    def disconnect_volume(self, info: Any, device: Device, force: bool = False) -> None: ...

    def extend_volume(self, info: Any) -> int: ...

    def open(self, info: Any, mode: OpenMode = "rb") -> VolumeHandle: ...


def check_mode(info: VolumeInfo, mode: str) -> bool:
    """Validate an open mode against the info's access mode; True when writable."""
    if mode not in ("rb", "r+b"):
        raise ValueError(f"mode must be 'rb' or 'r+b', not {mode!r}")
    writable = mode == "r+b"
    if writable and info.access_mode == "ro":
        raise ConnectorError(f"volume {info.volume_id} is attached read-only; cannot open "
                             f"it {mode!r}")
    return writable


class VolumeHandle(io.RawIOBase):
    """A volume opened for reading (and writing): positioned I/O over a fixed size.

    Subclasses supply `_pread` (or `_preadinto`), `_pwrite`, `_flush`, `_release` and may
    refine `extents`; this class owns the position, the bounds and the mode checks. Writing
    past the end raises ENOSPC (a volume does not grow by writing); reading there returns b"".
    """

    # class-level defaults, so a handle whose __init__ failed closes quietly in __del__
    _released = True
    _writable = False

    def __init__(self, size: int, writable: bool, name: str) -> None:
        super().__init__()
        self._size = size
        self._writable = writable
        self._pos = 0
        self.name = name
        self._released = False

    # what subclasses supply
    def _pread(self, count: int, offset: int) -> bytes:
        raise NotImplementedError

    def _preadinto(self, view: memoryview, offset: int) -> None:
        """Fill `view` from `offset` (inside the volume); override to read without a copy."""
        view[:] = self._pread(len(view), offset)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        """Make written data durable on the volume."""

    def _release(self) -> None:
        """Free the connection (called once, by close)."""

    # the file protocol
    @property
    def size(self) -> int:
        return self._size

    @property
    def mode(self) -> str:
        return "r+b" if self._writable else "rb"

    def readable(self) -> bool:
        self._checkClosed()
        return True

    def writable(self) -> bool:
        self._checkClosed()
        return self._writable

    def seekable(self) -> bool:
        self._checkClosed()
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise OSError(errno.EINVAL, f"negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        self._preadinto(view[:count], self._pos)
        self._pos += count
        return count

    def write(self, data: Any) -> int:
        self._checkClosed()
        if not self._writable:
            raise io.UnsupportedOperation(f"{self.name} is open read-only")
        view = memoryview(data).cast("B")
        if not view:
            return 0
        if self._pos + len(view) > self._size:
            raise OSError(errno.ENOSPC, f"write of {len(view)} bytes at {self._pos} passes the "
                                        f"end of {self.name} ({self._size} bytes)")
        self._pwrite(view, self._pos)
        self._pos += len(view)
        return len(view)

    def flush(self) -> None:
        if not self.closed and not self._released and self._writable:
            self._flush()
        super().flush()

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation("a volume cannot be truncated; extend it instead")

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            try:
                if not self._released:
                    self._release()
            finally:
                self._released = True
                super().close()

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """(offset, length, is_data) runs covering [offset, offset+length) in order. The
        default knows nothing, so it reports one data extent."""
        self._checkClosed()
        end = self._size if length is None else min(self._size, offset + length)
        if offset < end:
            yield Extent(offset, end - offset, True)
