"""The NBD connector: volumes served by an NBD server (qemu-nbd), reached through libnbd.

Nothing is attached to the kernel: `connect_volume` checks the export answers and returns its
URI, which QEMU and qemu-img open themselves; `open` gives a `VolumeHandle` over libnbd.
TLS uses a pre-shared key, written to a 0600 file only for the handshake.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import nbd  # type: ignore[import-untyped]

from blockyard.errors import ConnectorError
from blockyard.model import Extent, NbdInfo, OpenMode, VolumeHandle

from .base import Device, check_mode
from .util import remove_quietly, write_private

#: the largest request we send, whatever the server allows (qemu-nbd allows 32 MiB)
MAX_REQUEST = 32 * 1024 * 1024
#: the size of the requests a read or write is split into (capped by the server's maximum)
REQUEST = 1024 * 1024
#: how many requests one handle keeps in flight at most
DEPTH = 16
#: the smallest read-ahead window (it grows to DEPTH * REQUEST as sequential reads go on)
MIN_AHEAD = 128 * 1024
#: the largest block-status range we ask about at once (servers may not take 4 GiB)
MAX_STATUS = 1 << 30


def _error(what: str, where: str, exc: nbd.Error) -> ConnectorError:
    err = ConnectorError(f"{what} {where} failed: {exc.string}")
    err.cause = exc
    return err


def connect_handle(info: NbdInfo, *, where: str | None = None) -> Any:
    """A connected libnbd handle for `info`, with base:allocation requested."""
    where = where or info.uri
    h = nbd.NBD()
    try:
        h.set_export_name(info.export_name)
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
        if info.tls:
            _connect_tls(h, info)
        elif info.socket:
            h.connect_unix(info.socket)
        else:
            h.connect_tcp(info.host, str(info.port))
    except nbd.Error as exc:
        raise _error("connecting to", where, exc) from exc  # libnbd frees `h` when unused
    return h


def _connect_tls(h: Any, info: NbdInfo) -> None:
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_username(info.tls_psk_identity)
    with tempfile.TemporaryDirectory(prefix="blockyard-psk-") as tmp:  # 0700
        psk = os.path.join(tmp, "keys.psk")
        write_private(psk, f"{info.tls_psk_identity}:{info.tls_psk_key}\n")
        try:
            h.set_tls_psk_file(psk)
            if info.socket:
                h.connect_unix(info.socket)
            else:
                h.connect_tcp(info.host, str(info.port))
        finally:  # the handshake is over: the key need not stay on disk
            remove_quietly(psk)


@dataclass
class _Ahead:
    """One read-ahead request: its cookie, where it reads, and how much of it was served."""

    cookie: int
    offset: int
    length: int
    buf: bytearray
    used: int = 0


class NbdHandle(VolumeHandle):
    """A `VolumeHandle` over one libnbd connection, with pipelined requests.

    Reads and writes are split into requests of at most `request_size` bytes (and at most the
    server's maximum), of which up to `depth` are in flight at once (libnbd's async API).
    Unaligned edges are widened to the server's minimum block size with a read-modify-write,
    so any offset and length work. Reads land in the caller's buffer without a copy, except
    for sequential reads: from the second read that starts where the previous one ended, the
    handle reads ahead into its own buffers, a window that doubles with every sequential read
    up to DEPTH requests; a seek elsewhere or a write drops it.

    Writes of immutable data (`bytes`) are written behind: `write` returns once the requests
    are queued, and an error surfaces from the next call (`write`, `read`, `flush`, `close`,
    ...). Writes of mutable buffers complete before `write` returns, since the caller may
    reuse the buffer. `flush` (and `close`, which flushes) waits for every write first.
    """

    #: request size and requests in flight; None: the module's REQUEST and DEPTH
    request_size: int | None = None
    depth: int | None = None

    def __init__(self, h: Any, writable: bool, name: str) -> None:
        self._h = h
        #: (cookie, first byte, end) of the requests in flight; reads span nothing
        self._pending: deque[tuple[int, int, int]] = deque()
        self._failure: ConnectorError | None = None
        #: sequential reads: where the last read ended, the chunks read ahead in order, the
        #: offset the next read must start at to use them, where reading ahead goes on, and
        #: chunk buffers that are free again
        self._seq_end = -1
        self._ahead: deque[_Ahead] = deque()
        self._ahead_pos = -1
        self._ahead_next = 0
        self._ahead_window = 0
        self._spare: list[bytearray] = []
        try:
            size = h.get_size()
            if writable and h.is_read_only():
                raise ConnectorError(f"{name} is exported read-only")
            self._align = max(1, h.get_block_size(nbd.SIZE_MINIMUM))
            self._max = min(MAX_REQUEST, h.get_block_size(nbd.SIZE_MAXIMUM) or MAX_REQUEST)
            self._max -= self._max % self._align
            self._depth = max(1, self.depth or DEPTH)
            self._request = max(self._align, min(self.request_size or REQUEST, self._max))
            self._request -= self._request % self._align
            self._has_status = bool(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        except BaseException:
            self._h = None  # dropping the last reference closes the connection
            raise
        super().__init__(size, writable, name)

    def _call(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except nbd.Error as exc:
            raise _error(what, self.name, exc) from exc

    # the pipeline
    def _submit(self, what: str, fn: Any, buf: Any, offset: int, end: int = 0) -> None:
        """Queue one async request, first waiting until fewer than DEPTH are in flight and,
        for a write (`end` > `offset`), until no write in flight overlaps it (NBD orders
        nothing among requests in flight)."""
        if len(self._pending) >= self._depth:
            self._wait(self._depth - 1)
        if end > offset and any(lo < end and offset < hi for _, lo, hi in self._pending):
            self._wait(0)
        try:
            self._pending.append((fn(buf, offset), offset, end))
        except nbd.Error as exc:
            self._fail(_error(what, self.name, exc))
            self._wait(0)

    def _fail(self, err: ConnectorError) -> None:
        if self._failure is None:
            self._failure = err

    def _wait(self, limit: int) -> None:
        """Retire requests (oldest first) until at most `limit` are in flight; then raise the
        first error any request met. On an error everything in flight is retired first."""
        h, pending = self._h, self._pending
        while len(pending) > limit or (self._failure is not None and pending):
            cookie = pending[0][0]
            try:
                done = h.aio_command_completed(cookie)
            except nbd.Error as exc:
                pending.popleft()
                self._fail(_error("I/O on", self.name, exc))
                continue
            if done:
                pending.popleft()
                continue
            try:
                h.poll(-1)
            except nbd.Error as exc:  # the connection is dead: nothing will complete
                pending.clear()
                self._fail(_error("I/O on", self.name, exc))
        self._check()

    def _wait_for(self, cookie: int) -> None:
        """Wait until the request `cookie` (and every older one) has been retired."""
        pending = self._pending
        while pending and pending[0][0] <= cookie:
            self._wait(len(pending) - 1)
        self._check()

    def _check(self) -> None:
        err, self._failure = self._failure, None
        if err is not None:
            raise err

    def _drain(self) -> None:
        if self._pending or self._failure is not None:
            self._wait(0)

    # reads
    def _read_aligned_into(self, view: memoryview, offset: int) -> None:
        """Fill `view` (aligned offset and length, or up to the end) from `offset`."""
        pos, count = 0, len(view)
        while pos < count:
            n = min(count - pos, self._request)
            self._submit("reading", self._h.aio_pread, nbd.Buffer.from_buffer(view[pos:pos + n]),
                         offset + pos)
            pos += n

    def _preadinto(self, view: memoryview, offset: int) -> None:
        self._check()
        if any(hi > lo for _, lo, hi in self._pending):
            self._wait(0)  # reads see every earlier write
        count = len(view)
        if self._ahead and offset == self._ahead_pos:
            self._read_ahead_into(view, offset)
            return
        self._ahead.clear()  # not where we read ahead: drop it (in flight ones just retire)
        start = offset - offset % self._align
        end = min(self._size, -(-(offset + count) // self._align) * self._align)
        if start == offset and end == offset + count:
            if offset == self._seq_end and offset + count < self._size:
                # the second read in sequence: read ahead from here on
                self._ahead_next = offset
                self._ahead_window = 0
                self._read_ahead_into(view, offset)
                return
            self._read_aligned_into(view, offset)
            self._wait(0)
        else:  # unaligned: read the aligned span apart, copy out what was asked
            span = bytearray(end - start)
            self._read_aligned_into(memoryview(span), start)
            self._wait(0)
            view[:] = memoryview(span)[offset - start:offset - start + count]
        self._seq_end = offset + count

    def _read_ahead(self, at: int) -> None:
        """Keep up to `_ahead_window` bytes (and DEPTH requests) read ahead past `at`."""
        window = self._ahead_window
        while len(self._ahead) < self._depth and self._ahead_next < self._size and \
                self._ahead_next - at < window:
            n = min(self._request, window, self._size - self._ahead_next)
            buf = self._spare.pop() if self._spare else bytearray(self._request)
            target = buf if n == len(buf) else memoryview(buf)[:n]
            self._submit("reading", self._h.aio_pread, nbd.Buffer.from_buffer(target),
                         self._ahead_next)
            self._ahead.append(_Ahead(self._pending[-1][0], self._ahead_next, n, buf))
            self._ahead_next += n

    def _read_ahead_into(self, view: memoryview, offset: int) -> None:
        """Serve a sequential read from the read-ahead, in order, topping it up as it goes."""
        try:
            pos, count = 0, len(view)
            # the window starts at a few reads' worth and doubles with every sequential read
            self._ahead_window = min(self._depth * self._request,
                                     max(2 * self._ahead_window, 4 * count, MIN_AHEAD))
            self._ahead_window = max(self._align,
                                     self._ahead_window - self._ahead_window % self._align)
            self._read_ahead(offset)
            while pos < count:
                chunk = self._ahead[0]
                self._wait_for(chunk.cookie)
                n = min(count - pos, chunk.length - chunk.used)
                view[pos:pos + n] = memoryview(chunk.buf)[chunk.used:chunk.used + n]
                chunk.used += n
                pos += n
                if chunk.used == chunk.length:
                    self._ahead.popleft()
                    self._spare.append(chunk.buf)  # done: libnbd no longer writes into it
                    self._read_ahead(offset + pos)
        except BaseException:
            self._ahead.clear()
            self._seq_end = -1
            raise
        self._ahead_pos = self._seq_end = offset + count

    def _pread(self, count: int, offset: int) -> bytes:
        buf = bytearray(count)
        self._preadinto(memoryview(buf), offset)
        return bytes(buf)

    # writes
    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self._check()
        self._ahead.clear()  # stale now; reads in flight just retire
        self._seq_end = -1
        view = memoryview(data).cast("B")
        # bytes cannot change under us: written behind; anything else before we return
        behind = view.readonly and isinstance(view.obj, bytes)
        head = offset % self._align
        if head:  # the unaligned first block: read, patch, write back
            self._drain()
            start = offset - head
            n = min(len(view), self._align - head)
            block = bytearray(min(self._align, self._size - start))
            self._preadinto(memoryview(block), start)
            block[head:head + n] = view[:n]
            self._submit("writing", self._h.aio_pwrite, bytes(block), start, start + len(block))
            view, offset = view[n:], offset + n
        whole = len(view) - len(view) % self._align
        pos = 0
        while pos < whole:
            n = min(whole - pos, self._request)
            self._submit("writing", self._h.aio_pwrite, view[pos:pos + n], offset + pos,
                         offset + pos + n)
            pos += n
        tail = view[whole:]
        if tail:  # the unaligned last block
            start = offset + whole
            self._drain()
            block = bytearray(min(self._align, self._size - start))
            self._preadinto(memoryview(block), start)
            block[:len(tail)] = tail
            self._submit("writing", self._h.aio_pwrite, bytes(block), start, start + len(block))
        if not behind:
            self._wait(0)

    def _flush(self) -> None:
        self._drain()
        # the connection may have died since the last request: that is a flush failure too
        if self._call("flushing", self._h.can_flush):
            self._call("flushing", self._h.flush)

    def _release(self) -> None:
        try:
            try:
                self._drain()  # a read-only handle has no flush to wait for its reads
            except ConnectorError:
                pass  # close() already flushed (and raised); nothing more to report
            self._h.shutdown()
        except nbd.Error:
            pass  # the server is gone already; nothing left to flush
        finally:
            self._h = None  # libnbd (1.14) has no close(): the last reference closes it

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Runs of data and holes from NBD block status (base:allocation). Adjacent runs of
        the same kind are merged; without block status everything is data."""
        self._checkClosed()
        self._drain()  # block status sees every earlier write
        end = self._size if length is None else min(self._size, offset + length)
        if not self._has_status:
            yield from super().extents(offset, end - offset)
            return
        pending: Extent | None = None
        pos = offset
        while pos < end:
            found: list[tuple[int, bool]] = []

            self._call("block status of", self._h.block_status,
                       min(end - pos, MAX_STATUS), pos, _collector(found))
            if not found:
                raise ConnectorError(f"block status of {self.name} at {pos} returned nothing")
            for run, is_data in found:
                run = min(run, end - pos)
                if run <= 0:
                    break
                if pending and pending.is_data == is_data:
                    pending = Extent(pending.offset, pending.length + run, is_data)
                else:
                    if pending:
                        yield pending
                    pending = Extent(pos, run, is_data)
                pos += run
        if pending:
            yield pending


def _collector(found: list[tuple[int, bool]]) -> Any:
    """A block-status callback appending (length, is_data) runs of base:allocation."""

    def collect(context: str, start: int, entries: list[int], err: int) -> int:
        if context == nbd.CONTEXT_BASE_ALLOCATION:
            for i in range(0, len(entries), 2):
                found.append((entries[i], not entries[i + 1] & nbd.STATE_HOLE))
        return 0

    return collect


class NbdConnector:
    protocol = "nbd"

    def __init__(self, properties: dict[str, Any] | None = None, **_: Any) -> None:
        self._properties = dict(properties or {})

    def get_connector_properties(self) -> dict[str, Any]:
        return dict(self._properties)

    def connect_volume(self, info: NbdInfo) -> Device:
        """Check the export answers; the device is its URI."""
        with self.open(info, "rb") as handle:
            return Device(path=info.uri, size=handle.size)

    def disconnect_volume(self, info: NbdInfo, device: Device, force: bool = False) -> None:
        """Nothing stays connected between calls, so there is nothing to undo here."""

    def extend_volume(self, info: NbdInfo) -> int:
        """The size the server reports now (a new connection sees a resized export)."""
        with self.open(info, "rb") as handle:
            return handle.size

    def open(self, info: NbdInfo, mode: OpenMode = "rb") -> NbdHandle:
        writable = check_mode(info, mode)
        return NbdHandle(connect_handle(info), writable, info.uri)
