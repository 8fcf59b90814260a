"""The migration copy engine (blockyard.backends.transfer) on every kind of handle pair.

A file handle (SEEK_DATA + copy_file_range), a `VolumeHandle` that reports extents (as RBD's
and NBD's do), and one that knows nothing (everything is data): every pair must give an
identical copy, the chunked path must not write zero chunks, and `checksum` must depend on the
bytes only, not on how they are allocated.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockyard.backends import transfer
from blockyard.model import Extent, VolumeHandle

MiB = 1024 * 1024
SIZE = 64 * MiB


class MemHandle(VolumeHandle):
    """A volume in memory that knows its extents (like RbdHandle) — or not (`knows=False`)."""

    def __init__(self, data: bytearray, writable: bool, *, knows: bool = True) -> None:
        super().__init__(len(data), writable, "mem")
        self.data = data
        self.knows = knows
        self.written: list[tuple[int, int]] = []
        self.allocated: set[int] = set()  # MiB blocks written

    def _preadinto(self, view: memoryview, offset: int) -> None:
        view[:] = self.data[offset:offset + len(view)]

    def _pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self.data[offset:offset + len(data)] = data
        self.written.append((offset, len(data)))
        self.allocated.update(range(offset // MiB, -(-(offset + len(data)) // MiB)))

    def _flush(self) -> None:
        pass

    def _release(self) -> None:
        pass

    def extents(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        if not self.knows:
            yield from super().extents(offset, length)
            return
        end = self._size if length is None else min(self._size, offset + length)
        for block in range(offset // MiB, -(-end // MiB)):
            a, b = max(block * MiB, offset), min((block + 1) * MiB, end)
            yield Extent(a, b - a, block in self.allocated)


def pattern(seed: int) -> list[tuple[int, bytes]]:
    """Scattered data, unaligned, plus an all-zero written piece (allocated zeros)."""
    rng = random.Random(seed)
    pieces = [(rng.randrange(0, SIZE - 300_000), rng.randbytes(rng.randrange(1, 300_000)))
              for _ in range(20)]
    pieces.append((SIZE - 4096, rng.randbytes(4096)))
    pieces.append((8 * MiB, bytes(2 * MiB)))
    return pieces


def make_file(path: Path, seed: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(SIZE)
        for off, data in pattern(seed):
            f.seek(off)
            f.write(data)
    return path


def make_mem(seed: int, *, knows: bool = True) -> MemHandle:
    h = MemHandle(bytearray(SIZE), True, knows=knows)
    for off, data in pattern(seed):
        h.seek(off)
        h.write(data)
    h.written.clear()
    return h


def blank_file(path: Path) -> io.RawIOBase:
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return open(path, "r+b", buffering=0)


def content(h: io.RawIOBase) -> bytes:
    h.seek(0)
    out = bytearray()
    while chunk := h.read(8 * MiB):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("src_kind", ["file", "mem", "mem-blind"])
@pytest.mark.parametrize("dst_kind", ["file", "mem"])
def test_every_pair_copies_exactly(tmp_path: Path, src_kind: str, dst_kind: str) -> None:
    src: io.RawIOBase = (open(make_file(tmp_path / "src", 1), "rb", buffering=0)
                         if src_kind == "file" else make_mem(1, knows=src_kind == "mem"))
    dst: io.RawIOBase = (blank_file(tmp_path / "dst") if dst_kind == "file"
                         else MemHandle(bytearray(SIZE), True))
    seen: list[tuple[int, int]] = []
    stats = transfer.copy_volume(src, dst, SIZE, lambda d, t: seen.append((d, t)),
                                 chunk=1 * MiB)
    assert content(src) == content(dst)
    assert transfer.checksum(src, SIZE) == transfer.checksum(dst, SIZE)
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] == stats.data_bytes
    if src_kind == "file" and dst_kind == "file":
        assert stats.method == "copy_file_range"
    else:
        assert stats.method == "chunked"
        # zero chunks are never written: the 2 MiB written zeros and every hole are skipped
        assert stats.written_bytes < stats.data_bytes or src_kind != "mem-blind"
        if isinstance(dst, MemHandle):
            assert not any(8 * MiB <= off < 10 * MiB for off, _ in dst.written)
    if src_kind == "mem-blind":
        assert stats.data_bytes == SIZE  # a handle that knows nothing: all of it is data
    else:
        assert stats.data_bytes < SIZE // 2  # only what is allocated was looked at


def test_thin_file_to_file(tmp_path: Path) -> None:
    src_path = make_file(tmp_path / "src", 2)
    with open(src_path, "rb", buffering=0) as src, blank_file(tmp_path / "dst") as dst:
        transfer.copy_volume(src, dst, SIZE)
    alloc = os.stat(tmp_path / "dst").st_blocks * 512
    assert alloc <= os.stat(src_path).st_blocks * 512 + MiB


def test_checksum_ignores_allocation_but_not_bytes(tmp_path: Path) -> None:
    a = make_mem(3)
    b = make_mem(3, knows=False)  # the same bytes, "all allocated"
    c = open(make_file(tmp_path / "c", 3), "rb", buffering=0)
    digests = {transfer.checksum(h, SIZE) for h in (a, b, c)}
    assert len(digests) == 1
    a.seek(SIZE // 2)
    a.write(b"\x01")
    assert transfer.checksum(a, SIZE) not in digests
    # a zero byte written into a hole changes nothing; a different length does
    b.seek(3 * MiB + 5)
    b.write(b"\x00")
    assert transfer.checksum(b, SIZE) in digests
    assert transfer.checksum(c, SIZE - MiB) not in digests
    c.close()
