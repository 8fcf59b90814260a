"""Thin-preserving copies of sparse files.

Volumes are mostly holes, so a copy must touch only the allocated extents of the source: a 10 GiB
volume with 100 MiB written should cost 100 MiB of I/O and 100 MiB of new space, not 10 GiB.
These helpers work on plain file descriptors so that any code holding two files (snapshots,
clones, migration between backends) can use them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

#: chunk size of the read/write fallback
CHUNK = 8 * 1024 * 1024

_ZEROS = bytes(CHUNK)

#: errors of copy_file_range that mean "not possible here", not "failed": cross-filesystem on old
#: kernels (EXDEV), missing syscall (ENOSYS), fds it does not handle (EINVAL), filesystems that
#: refuse it (EOPNOTSUPP)
_CFR_FALLBACK = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})

#: errors of lseek(SEEK_DATA) that mean the filesystem cannot report holes
_SEEK_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP})


def iter_data_extents(fd: int, length: int) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, size)`` of every data extent of `fd` within the first `length` bytes.

    Uses SEEK_DATA/SEEK_HOLE, so holes are skipped without reading them. When the filesystem
    cannot report holes, yields one extent covering the file (up to `length`): correct, only not
    thin. Moves the file position of `fd`; callers should use positional I/O.
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        yield from _whole_file(fd, length)
        return
    pos = 0
    while pos < length:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos: only a hole remains
                return
            if pos == 0 and exc.errno in _SEEK_UNSUPPORTED:
                yield from _whole_file(fd, length)
                return
            raise
        if start >= length:
            return
        # a file always ends with an implicit hole at EOF, so SEEK_HOLE succeeds after data
        end = min(os.lseek(fd, start, seek_hole), length)
        if end <= start:  # defensive: never loop forever on a confused filesystem
            end = length
        yield start, end - start
        pos = end


def _whole_file(fd: int, length: int) -> Iterator[tuple[int, int]]:
    size = min(os.fstat(fd).st_size, length)
    if size > 0:
        yield 0, size


def copy_sparse(src_fd: int, dst_fd: int, length: int) -> None:
    """Make `dst_fd` a copy of the first `length` bytes of `src_fd`, allocating only what is.

    The destination is truncated to zero first (so stale data of a partial earlier attempt can
    never show through a hole of the source) and then to exactly `length` bytes, which reads as
    zeros. Only the source's data extents are then copied, with copy_file_range (in-kernel, and a
    reflink on filesystems that share extents) or, where that is unavailable, with pread/pwrite in
    `CHUNK` pieces that skips all-zero chunks. If the source is shorter than `length`, the rest
    of the destination is a hole. Does not fsync: the caller decides when durability is needed.
    """
    os.ftruncate(dst_fd, 0)
    os.ftruncate(dst_fd, length)
    use_cfr = hasattr(os, "copy_file_range")
    for start, size in iter_data_extents(src_fd, length):
        pos, end = start, start + size
        while pos < end:
            if use_cfr:
                try:
                    n = os.copy_file_range(src_fd, dst_fd, end - pos, pos, pos)
                except OSError as exc:
                    if exc.errno not in _CFR_FALLBACK:
                        raise
                    use_cfr = False
                    continue
            else:
                n = _copy_chunk(src_fd, dst_fd, pos, min(CHUNK, end - pos))
            if n == 0:  # source EOF: it is shorter than its extents claimed (shrunk meanwhile)
                break
            pos += n


def _copy_chunk(src_fd: int, dst_fd: int, pos: int, size: int) -> int:
    """Copy up to `size` bytes at `pos` by pread/pwrite; return how many were read (0 at EOF)."""
    data = os.pread(src_fd, size, pos)
    if not data:
        return 0
    n = len(data)
    if data == (_ZEROS if n == CHUNK else bytes(n)):
        return n  # the destination already reads zeros here; writing would allocate
    view = memoryview(data)
    written = 0
    while written < n:
        written += os.pwrite(dst_fd, view[written:], pos + written)
    return n


def allocated_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes actually allocated to `path` on disk (st_blocks is in 512-byte units everywhere)."""
    return os.stat(path).st_blocks * 512
