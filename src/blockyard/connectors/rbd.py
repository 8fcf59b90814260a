"""The rbd connector: Ceph RBD images through librbd, in userspace (no ``rbd map``).

`RbdHandle` is the file-like handle over an ``rbd.Image``; the rbd backend driver
(`blockyard.backends.rbd`) hands out the same class from its open_volume, so both sides of a
copy behave alike (its one dependency on the connector library, as the iSCSI target's on
`blockyard.connectors.util`). Extents come from ``diff_iterate``, so a copy skips what the
image never allocated (its parent's data included, for clones).

Writes are pipelined: each is cut into `AIO_PIECE` pieces handed to ``aio_write``, with up to
`AIO_DEPTH` in flight, so a copy keeps the OSDs busy the way ``qemu-img convert -W -m 16`` does
(one synchronous write at a time leaves them idle between round trips). A write returns once
its pieces are queued; a failed piece is reported by the next call on the handle, and flush()
and close() wait for every piece, so a copy is complete and its errors known once
`close_volume` returns. Reads wait for the writes in flight first: they see what was written.

The cluster connections that handles use turn librbd's cache off (`CONNECTION_CONF`): the
handle's pipeline already keeps the OSDs busy, and the cache would only copy every byte once
more on a machine whose cores the OSDs may share. With the cache on (an image opened on some
other connection) it writes through until the first flush (guarding guests that never flush),
so a writable handle flushes once on open.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

try:  # Debian's python3-rados/python3-rbd (scripts/setup.sh); the other connectors work without
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - the packages are part of the setup
    rados = rbd = None

from blockyard.backends.base import OpenMode

from .base import ConnectorError, Device, Extent, VolumeHandle, check_mode
from .info import RbdInfo

#: the span one diff_iterate call covers: its extents are sorted and merged per window, so
#: memory stays bounded on huge images
_EXTENT_WINDOW = 1 << 30

#: client options of the connections handles are opened on
CONNECTION_CONF = {"rbd_cache": "false"}

#: bytes of one asynchronous write and how many may be in flight (64 MiB of copies at most):
#: on a loopback single-OSD cluster 2 MiB × 32 was the fastest pair, on a par with
#: ``qemu-img convert -W -m 16`` (4 MiB pieces, whole objects, were ~20% slower)
AIO_PIECE = 2 * 1024 * 1024
AIO_DEPTH = 32


class RbdHandle(VolumeHandle):
    """Positioned I/O on an open ``rbd.Image``; closing it closes what `owned` lists too
    (the image's ioctx, and the cluster connection when the handle made its own)."""

    def __init__(self, image: Any, writable: bool, name: str,
                 owned: tuple[Callable[[], object], ...] = ()) -> None:
        self._image = image
        self._owned = owned
        #: the writes in flight: token → (start, end); guarded by _idle
        self._inflight: dict[int, tuple[int, int]] = {}
        self._tokens = itertools.count()
        self._idle = threading.Condition()
        #: the first asynchronous write that failed, raised by the next call
        self._failed: OSError | None = None
        try:
            size = int(image.size())
            if writable:
                image.flush()  # leave writethrough-until-flush mode before bulk writes
        except rbd.Error as exc:
            self._close_all()
            raise ConnectorError(f"cannot use rbd image {name}: {exc}") from exc
        super().__init__(size, writable, name)

    def _close_all(self) -> None:
        try:
            self._wait(lambda: not self._inflight)
        except BaseException:  # interrupted: librbd's close still waits for its writes
            pass
        for close in (self._image.close, *self._owned):
            try:
                close()
            except (rbd.Error, rados.Error):
                pass

    # the write pipeline

    def _wait(self, ready: Callable[[], bool]) -> None:
        with self._idle:
            self._idle.wait_for(ready)

    def _drain(self) -> None:
        """Wait for every write in flight; raise the first failure (once)."""
        self._wait(lambda: not self._inflight)
        failed, self._failed = self._failed, None
        if failed is not None:
            raise failed

    def _submit(self, piece: bytes, offset: int) -> None:
        end = offset + len(piece)

        def has_room() -> bool:  # a free slot, and no overlap with a write in flight
            return len(self._inflight) < AIO_DEPTH and not any(
                start < end and offset < stop for start, stop in self._inflight.values())

        with self._idle:
            self._idle.wait_for(has_room)
            token = next(self._tokens)
            self._inflight[token] = (offset, end)

        def done(completion: Any) -> None:  # on a librbd thread
            rc = int(completion.get_return_value())
            with self._idle:
                del self._inflight[token]
                if rc < 0 and self._failed is None:
                    self._failed = OSError(-rc, f"write of {len(piece)} bytes at {offset} to "
                                                f"{self.name} failed: {os.strerror(-rc)}")
                self._idle.notify_all()

        try:
            self._image.aio_write(piece, offset, done)
        except BaseException:
            with self._idle:
                self._inflight.pop(token, None)
                self._idle.notify_all()
            raise

    # VolumeHandle

    def _pread(self, count: int, offset: int) -> bytes:
        self._drain()
        data: bytes = self._image.read(offset, count)
        if len(data) < count:  # shrunk under us: the rest reads as zeros
            data += bytes(count - len(data))
        return data

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        if self._failed is not None:
            self._drain()
        view = memoryview(data)
        for start in range(0, len(view), AIO_PIECE):
            # a copy: the caller may reuse its buffer as soon as write() returns
            self._submit(bytes(view[start:start + AIO_PIECE]), offset + start)

    def _flush(self) -> None:
        self._drain()
        self._image.flush()

    def _release(self) -> None:
        self._close_all()

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Data where the image (or its parent, for a clone) has objects, holes elsewhere.

        With the object map (fast-diff) this costs nothing per object; granularity is the
        object (4 MiB by default), so a data extent may include zeros, never the reverse.
        """
        self._checkClosed()
        self._drain()  # the object map knows a write once it has landed
        end = self._size if length is None else min(self._size, offset + length)
        pos = offset  # everything before pos has been yielded or is in `run`
        run: list[int] = []  # a data extent still growing: [start, end]
        window = offset
        while window < end:
            stop = min(end, window + _EXTENT_WINDOW)
            found: list[tuple[int, int]] = []

            def collect(off: int, size: int, exists: bool, found: list[tuple[int, int]] = found
                        ) -> int:
                if exists:
                    found.append((off, size))
                return 0

            self._image.diff_iterate(window, stop - window, None, collect,
                                     include_parent=True, whole_object=True)
            for start, size in sorted(found):
                start, stop_ = max(start, window), min(start + size, stop)
                if run and start <= run[1]:  # touches the growing extent: extend it
                    run[1] = max(run[1], stop_)
                    continue
                if stop_ <= max(start, pos):
                    continue
                if run:
                    yield Extent(run[0], run[1] - run[0], True)
                    pos = run[1]
                start = max(start, pos)
                if start > pos:
                    yield Extent(pos, start - pos, False)
                run = [start, stop_]
            window = stop
        if run:
            yield Extent(run[0], run[1] - run[0], True)
            pos = run[1]
        if pos < end:
            yield Extent(pos, end - pos, False)


def connect_cluster(info: RbdInfo, timeout: float = 10.0) -> Any:
    """A connected ``rados.Rados`` for `info`: its monitors, user and key (no conf file is
    needed when the key travels in the info)."""
    if rados is None:
        raise ConnectorError("the rbd connector needs python3-rados and python3-rbd")
    # Rados.connect ignores its timeout argument: client_mount_timeout is what bounds it
    # (a wrong key would otherwise hang for the default 300 s)
    conf: dict[str, str] = {"mon_host": info.mon_host,
                            "client_mount_timeout": str(max(1, round(timeout))),
                            **CONNECTION_CONF}
    if info.key:
        conf["key"] = info.key
    if not info.auth_enabled:
        conf["auth_client_required"] = "none"
    cluster = rados.Rados(rados_id=info.auth_username or "admin", clustername=info.cluster_name,
                          conf=conf)
    try:
        if not info.key:  # no key handed over: this host's conf and keyring must have it
            cluster.conf_read_file()
            cluster.conf_set("mon_host", info.mon_host)
        cluster.connect(timeout=timeout)
    except rados.Error as exc:
        cluster.shutdown()
        raise ConnectorError(f"cannot connect to the Ceph cluster of {info.name} "
                             f"({info.mon_host}): {exc}") from exc
    return cluster


def open_image(info: RbdInfo, writable: bool, timeout: float = 10.0) -> RbdHandle:
    """Connect and open `info`'s image; the handle owns the connection."""
    cluster = connect_cluster(info, timeout)
    closers: list[Callable[[], object]] = [cluster.shutdown]
    try:
        ioctx = cluster.open_ioctx(info.pool)
        closers.insert(0, ioctx.close)
        image = rbd.Image(ioctx, info.image, snapshot=info.snapshot,
                          read_only=not writable or info.snapshot is not None)
    except (rados.Error, rbd.Error) as exc:
        for close in closers:
            close()
        raise ConnectorError(f"cannot open rbd image {info.name}: {exc}") from exc
    return RbdHandle(image, writable, f"rbd:{info.name}", tuple(closers))


class RbdConnector:
    """Nothing is mapped on the host: QEMU and the handles speak librbd directly."""

    protocol = "rbd"

    def __init__(self, properties: dict[str, Any] | None = None, *,
                 connect_timeout: float = 10.0, **_: Any) -> None:
        self._properties = dict(properties or {})
        #: seconds to reach the monitors and authenticate (a wrong key fails only then)
        self.connect_timeout = connect_timeout

    def get_connector_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    def connect_volume(self, info: RbdInfo) -> Device:
        """Check that the image opens with the credentials given; the device is its name
        (``rbd:pool/image``; the secrets stay in the info, never in a path)."""
        with open_image(info, False, self.connect_timeout) as handle:
            return Device(path=f"rbd:{info.name}", size=handle.size)

    def disconnect_volume(self, info: RbdInfo, device: Device, force: bool = False) -> None:
        """Nothing was mapped, so nothing is torn down."""

    def extend_volume(self, info: RbdInfo) -> int:
        """The image's current size (librbd clients see a resize at once)."""
        with open_image(info, False, self.connect_timeout) as handle:
            return handle.size

    def open(self, info: RbdInfo, mode: OpenMode = "rb") -> RbdHandle:
        return open_image(info, check_mode(info, mode), self.connect_timeout)
