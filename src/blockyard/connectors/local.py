"""The local connector: the volume is a file or block device on this host already."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from blockyard.errors import ConnectorError
from blockyard.model import Extent, LocalInfo, OpenMode, VolumeHandle

from .base import Device, check_mode


def _size_of(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConnectorError(f"local volume path {path} does not exist") from None
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    raise ConnectorError(f"local volume path {path} is neither a file nor a block device")


class LocalHandle(VolumeHandle):
    """Positioned I/O on a file descriptor; extents from SEEK_DATA/SEEK_HOLE."""

    def __init__(self, path: str, writable: bool) -> None:
        size = _size_of(path)
        self._fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
        super().__init__(size, writable, path)

    def fileno(self) -> int:
        self._checkClosed()
        return self._fd

    def _pread(self, count: int, offset: int) -> bytes:
        chunks = []
        while count:
            chunk = os.pread(self._fd, count, offset)
            if not chunk:  # the file shrank under us: the rest reads as zeros
                chunks.append(bytes(count))
                break
            chunks.append(chunk)
            count -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self._fd, view, offset)
            view = view[done:]
            offset += done

    def _flush(self) -> None:
        os.fsync(self._fd)

    def _release(self) -> None:
        os.close(self._fd)

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        self._checkClosed()
        end = self._size if length is None else min(self._size, offset + length)
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    yield Extent(pos, end - pos, False)
                    return
                if exc.errno == errno.EINVAL:  # no SEEK_DATA here (block device, old fs)
                    yield Extent(pos, end - pos, True)
                    return
                raise
            if data > pos:
                yield Extent(pos, min(data, end) - pos, False)
                pos = min(data, end)
                if pos >= end:
                    return
            hole = min(os.lseek(self._fd, pos, os.SEEK_HOLE), end)
            yield Extent(pos, hole - pos, True)
            pos = hole


class LocalConnector:
    protocol = "local"

    def __init__(self, properties: dict[str, Any] | None = None, **_: Any) -> None:
        self._properties = dict(properties or {})

    def get_connector_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    def connect_volume(self, info: LocalInfo) -> Device:
        return Device(path=info.device_path, size=_size_of(info.device_path))

    def disconnect_volume(self, info: LocalInfo, device: Device, force: bool = False) -> None:
        """Nothing was set up for a local path, so nothing is torn down."""

    def extend_volume(self, info: LocalInfo) -> int:
        return _size_of(info.device_path)

    def open(self, info: LocalInfo, mode: OpenMode = "rb") -> LocalHandle:
        return LocalHandle(info.device_path, check_mode(info, mode))
