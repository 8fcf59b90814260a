"""Copying and checksumming whole volumes between any two backends, sparse-aware.

Migration between backends has only what every driver offers: `open_volume`, a raw file-like
handle. This module makes the most of what each handle can tell:

* which parts hold data: a `VolumeHandle` answers `extents()` (RBD's diff_iterate, NBD block
  status); a plain regular file answers SEEK_DATA/SEEK_HOLE on its descriptor; anything else is
  treated as data from end to end (correct, only slower);
* how to move bytes: two regular files use ``copy_file_range`` (in-kernel, no copy through user
  space, a reflink where the filesystem shares extents); every other pair reads large chunks and
  writes only the chunks that are not all zeros, so a thin source stays thin on any destination.

The destination must read as zeros where the source has holes (a freshly created volume does):
holes are never written, that is the point. `checksum` then proves the copy: its digest depends
only on the bytes of the volume over its full size, never on how either side is allocated.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from blockyard.backends.sparse import iter_data_extents
from blockyard.model import VolumeHandle

#: size of one read/write in the chunked path (large sequential I/O, few system calls)
CHUNK = 8 * 1024 * 1024
#: most bytes one copy_file_range call is asked for, so progress is reported regularly
CFR_PIECE = 64 * 1024 * 1024
#: granularity of the zero detection of the chunked path: a zero block this big is not written
GRAIN = 64 * 1024
#: the finest zero detection, at the edges of the runs that are written
FS_BLOCK = 4096
#: the grid of `checksum`: a block of this size that is all zeros does not enter the digest
BLOCK = 1024 * 1024

_ZEROS = bytes(CHUNK)

#: errors of copy_file_range that mean "not possible for this pair", not "failed"
_CFR_FALLBACK = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})

#: progress callback: (bytes of source data done, bytes of source data in total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CopyStats:
    #: bytes the source reported as data (what had to be looked at)
    data_bytes: int
    #: bytes written to the destination (data minus the zero chunks skipped)
    written_bytes: int
    #: "copy_file_range" or "chunked": which path moved the bytes
    method: str


def regular_fd(handle: io.RawIOBase) -> int | None:
    """The descriptor of a handle that is a plain regular file, else None.

    Only regular files answer SEEK_DATA truthfully and take copy_file_range; a block device or a
    handle without a descriptor (RBD, NBD) goes through the generic path.
    """
    if isinstance(handle, VolumeHandle):
        return None
    try:
        fd = handle.fileno()
    except (OSError, AttributeError, io.UnsupportedOperation):
        return None
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


def data_extents(handle: io.RawIOBase, length: int) -> list[tuple[int, int]]:
    """(offset, size) of the parts of `handle` within `length` that may hold data, merged."""
    raw: Iterable[tuple[int, int]]
    if isinstance(handle, VolumeHandle):
        raw = ((e.offset, e.length) for e in handle.extents(0, length) if e.is_data)
    else:
        fd = regular_fd(handle)
        raw = iter_data_extents(fd, length) if fd is not None else [(0, length)]
    merged: list[tuple[int, int]] = []
    for off, size in raw:
        end = min(off + size, length)
        if end <= off:
            continue
        if merged and off <= merged[-1][0] + merged[-1][1]:
            start = merged[-1][0]
            merged[-1] = (start, max(merged[-1][1], end - start))
        else:
            merged.append((off, end - off))
    return merged


def _read_at(handle: io.RawIOBase, fd: int | None, view: memoryview, offset: int) -> int:
    """Fill `view` from `offset`; returns how many bytes were read (fewer only at the end)."""
    if fd is not None:
        done = os.preadv(fd, [view], offset)
        while 0 < done < len(view):
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                break
            done += n
        return done
    handle.seek(offset)
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            break
        done += n
    return done


def _write_at(handle: io.RawIOBase, fd: int | None, view: memoryview, offset: int) -> None:
    if fd is not None:
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)
        return
    handle.seek(offset)
    done = 0
    while done < len(view):
        n = handle.write(view[done:])
        if not n:
            raise OSError(errno.EIO, f"short write at {offset + done}")
        done += n


def _is_zero(view: memoryview) -> bool:
    """All zeros? bytes.startswith compares with memcmp (memoryview == compares per item)."""
    if len(view) <= CHUNK:
        return _ZEROS.startswith(view)
    return all(_ZEROS.startswith(view[i:i + CHUNK]) for i in range(0, len(view), CHUNK))


def _nonzero_runs(view: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of the runs of `GRAIN` blocks of `view` that are not all zeros.

    Sources that report extents coarsely (RBD: whole 4 MiB objects) hand over mostly-zero
    chunks; writing only these runs keeps the destination as thin as the data really is.
    """
    runs: list[tuple[int, int]] = []
    for off in range(0, len(view), GRAIN):
        block = view[off:off + GRAIN]
        if _is_zero(block):
            continue
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + len(block))
        else:
            runs.append((off, len(block)))
    # trim each run's zero edges to the filesystem block: data that starts or ends in the
    # middle of a grain (unaligned writes) then allocates no more than in the source
    trimmed = []
    for start, size in runs:
        end = start + size
        while end - start > FS_BLOCK and _is_zero(view[start:start + FS_BLOCK]):
            start += FS_BLOCK
        while end - start > FS_BLOCK and _is_zero(view[end - FS_BLOCK:end]):
            end -= FS_BLOCK
        trimmed.append((start, end - start))
    return trimmed


def copy_volume(src: io.RawIOBase, dst: io.RawIOBase, length: int,
                progress: Progress | None = None, *, chunk: int = CHUNK) -> CopyStats:
    """Copy the first `length` bytes of `src` into `dst` (which reads as zeros), thinly.

    Reads only the source's data extents; in the chunked path a `GRAIN` block that reads as
    zeros is not written. `progress(done, total)` is called before the first piece and after
    every piece, in bytes of source data. Does not flush or fsync `dst`: closing it through
    the driver's `close_volume` does.
    """
    extents = data_extents(src, length)
    total = sum(size for _, size in extents)
    src_fd, dst_fd = regular_fd(src), regular_fd(dst)
    done = written = 0
    use_cfr = src_fd is not None and dst_fd is not None and hasattr(os, "copy_file_range")
    buf = bytearray(chunk)
    whole = memoryview(buf)
    if progress is not None:
        progress(0, total)
    for start, size in extents:
        pos, end = start, start + size
        while pos < end:
            if use_cfr:
                assert src_fd is not None and dst_fd is not None
                try:
                    n = os.copy_file_range(src_fd, dst_fd, min(CFR_PIECE, end - pos), pos, pos)
                except OSError as exc:
                    if exc.errno not in _CFR_FALLBACK:
                        raise
                    use_cfr = False  # this pair cannot: the chunked path does the rest
                    continue
                if n == 0:
                    break  # the source is shorter than it claimed: the rest reads as zeros
                written += n
            else:
                view = whole[:min(chunk, end - pos)]
                n = _read_at(src, src_fd, view, pos)
                if n == 0:
                    break
                if not _is_zero(view[:n]):
                    for off, run in _nonzero_runs(view[:n]):
                        _write_at(dst, dst_fd, view[off:off + run], pos + off)
                        written += run
            pos += n
            done += n
            if progress is not None:
                progress(done, total)
    return CopyStats(total, written, "copy_file_range" if use_cfr else "chunked")


def checksum(handle: io.RawIOBase, length: int, *, chunk: int = CHUNK) -> str:
    """A sha256 of the first `length` bytes of `handle` that reads only its data extents.

    The digest covers the volume's full range: it hashes, in order, each `BLOCK`-aligned block
    that is not all zeros, prefixed with its offset, then the length. Holes and zero blocks
    contribute nothing, on either side, so two volumes get the same digest exactly when their
    bytes are equal, however each one is allocated (a zero block allocated on one side and a
    hole on the other compare equal, as they should).
    """
    h = hashlib.sha256()
    fd = regular_fd(handle)
    # the data extents, widened to the block grid and merged
    ranges: list[tuple[int, int]] = []
    for off, size in data_extents(handle, length):
        a, b = off - off % BLOCK, min(-(-(off + size) // BLOCK) * BLOCK, length)
        if ranges and a <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], b))
        else:
            ranges.append((a, b))
    chunk -= chunk % BLOCK
    buf = bytearray(chunk)
    whole = memoryview(buf)
    for a, b in ranges:
        pos = a
        while pos < b:
            view = whole[:min(chunk, b - pos)]
            n = _read_at(handle, fd, view, pos)
            if n == 0:
                break
            for i in range(0, n, BLOCK):
                block = view[i:min(i + BLOCK, n)]
                if not _is_zero(block):
                    h.update((pos + i).to_bytes(8, "little"))
                    h.update(block)
            pos += n
    h.update(length.to_bytes(8, "little"))
    return h.hexdigest()
