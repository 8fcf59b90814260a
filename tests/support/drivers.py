"""Reading and writing a volume through its driver's `open_volume`, for driver tests."""

from __future__ import annotations

import io

from blockyard.backends.base import VolumeDriver, VolumeRef


def write_at(drv: VolumeDriver, volume: VolumeRef, offset: int, data: bytes) -> None:
    handle = drv.open_volume(volume, "r+b")
    try:
        handle.seek(offset)
        assert handle.write(data) == len(data)
    finally:
        drv.close_volume(volume, handle)


def read_at(drv: VolumeDriver, volume: VolumeRef, offset: int, size: int) -> bytes:
    handle = drv.open_volume(volume)
    try:
        handle.seek(offset)
        return handle.read(size) or b""
    finally:
        drv.close_volume(volume, handle)


def size_of(drv: VolumeDriver, volume: VolumeRef) -> int:
    handle = drv.open_volume(volume)
    try:
        return handle.seek(0, io.SEEK_END)
    finally:
        drv.close_volume(volume, handle)
