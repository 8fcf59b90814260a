"""`RbdHandle`: a librbd image as a `VolumeHandle`, for the rbd backend and the rbd connector.

Both sides of an RBD copy hand out this one class: the rbd backend driver's `open_volume` (on
the driver's cluster connection, for migrations) and the rbd connector's `open` (on a
connection made from the connection info). It lives in a bottom-layer module of its own,
importing only `blockyard.model` and `blockyard.errors`, because backends and connectors are
siblings that may not import each other: putting it in either would make the other reach into
a sibling; a copy in each would be two write pipelines to keep in step; and `blockyard.model`
holds values and contracts, not librbd code. `CONNECTION_CONF` is here for the same reason:
every cluster connection that handles are opened on (the driver's and the connector's) must
turn the cache off alike.

Extents come from ``diff_iterate``, so a copy skips what the image never allocated (its
parent's data included, for clones).

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

from blockyard.errors import ConnectorError
from blockyard.model import Extent, VolumeHandle

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
