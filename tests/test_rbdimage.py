"""`blockyard.rbdimage.RbdHandle`'s write pipeline, on a fake ``rbd.Image`` (no Ceph needed;
the handle against a real cluster is exercised by tests/connectors/test_rbd.py and
tests/backends/test_rbd.py)."""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

import pytest

from blockyard import rbdimage

MiB = 1024**2


class SlowImage:
    """An ``rbd.Image`` stand-in whose aio writes land after `delay` on their own threads, in
    reverse order of submission, with an optional failure at one offset."""

    def __init__(self, size: int, delay: float = 0.02, fail_at: int | None = None) -> None:
        self.data = bytearray(size)
        self.delay = delay
        self.fail_at = fail_at
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()
        self.closed = False

    def size(self) -> int:
        return len(self.data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        assert self.in_flight == 0, "closed with writes in flight"
        self.closed = True

    def read(self, offset: int, count: int) -> bytes:
        return bytes(self.data[offset:offset + count])

    def aio_write(self, data: bytes, offset: int, oncomplete: Any) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            delay = self.delay * (1 + 1 / self.in_flight)  # later submissions land sooner

        def land() -> None:
            time.sleep(delay)
            rc = -errno.EIO if offset == self.fail_at else 0
            if rc == 0:
                self.data[offset:offset + len(data)] = data
            with self.lock:
                self.in_flight -= 1
            oncomplete(type("Completion", (), {"get_return_value": lambda _: rc})())

        threading.Thread(target=land, daemon=True).start()


def test_writes_are_pipelined_up_to_the_depth() -> None:
    piece = rbdimage.AIO_PIECE
    image = SlowImage(80 * piece)
    handle = rbdimage.RbdHandle(image, True, "fake")
    data = os.urandom(80 * piece)
    t0 = time.monotonic()
    handle.write(data)  # 80 pieces; one at a time would take 80 × 20 ms
    handle.flush()
    assert time.monotonic() - t0 < 40 * image.delay
    assert 1 < image.most_in_flight <= rbdimage.AIO_DEPTH
    assert bytes(image.data) == data
    handle.close()
    assert image.closed


def test_overlapping_writes_land_in_order_and_reads_see_them() -> None:
    image = SlowImage(4 * MiB)
    handle = rbdimage.RbdHandle(image, True, "fake")
    handle.write(b"a" * MiB)
    handle.seek(MiB // 2)
    handle.write(b"b" * MiB)  # overlaps the first, still in flight: must wait for it
    handle.seek(0)
    assert handle.read(2 * MiB) == b"a" * (MiB // 2) + b"b" * MiB + bytes(MiB // 2)
    handle.close()


def test_a_failed_write_is_reported_by_the_next_call_and_by_close() -> None:
    piece = rbdimage.AIO_PIECE
    image = SlowImage(8 * piece, fail_at=2 * piece)
    handle = rbdimage.RbdHandle(image, True, "fake")
    handle.write(bytes(4 * piece))  # returns before the pieces land
    with pytest.raises(OSError, match="at 4194304") as failed:
        handle.flush()
    assert failed.value.errno == errno.EIO
    handle.flush()  # reported once
    image.fail_at = 6 * piece
    handle.seek(6 * piece)
    handle.write(bytes(piece))
    with pytest.raises(OSError, match="failed"):
        handle.close()
    assert handle.closed and image.closed
