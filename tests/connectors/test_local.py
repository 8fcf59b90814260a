"""The local connector: plain files, with the shared handle semantics."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from blockyard.connectors import Device, connector_for
from blockyard.errors import ConnectorError
from blockyard.model import LocalInfo

MiB = 1024 * 1024


@pytest.fixture
def volume(tmp_path: Path) -> LocalInfo:
    path = tmp_path / "volume-1"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    return LocalInfo(str(path), "v1")


def test_connect_extend_disconnect(volume: LocalInfo) -> None:
    conn = connector_for(volume)
    device = conn.connect_volume(volume)
    assert device == Device(volume.device_path, 8 * MiB)
    os.truncate(volume.device_path, 16 * MiB)
    assert conn.extend_volume(volume) == 16 * MiB
    conn.disconnect_volume(volume, device)
    with pytest.raises(ConnectorError, match="does not exist"):
        conn.connect_volume(LocalInfo(volume.device_path + ".gone"))


def test_round_trip_seek_and_bounds(volume: LocalInfo) -> None:
    conn = connector_for(volume)
    with conn.open(volume, "r+b") as f:
        assert (f.readable(), f.writable(), f.seekable(), f.size) == (True, True, True, 8 * MiB)
        f.seek(1000)
        f.write(b"hello")
        assert f.tell() == 1005
        assert f.seek(-5, io.SEEK_CUR) == 1000
        assert f.read(5) == b"hello"
        assert f.seek(-3, io.SEEK_END) == 8 * MiB - 3
        f.write(b"end")
        assert f.read(10) == b""
        with pytest.raises(OSError) as full:
            f.write(b"x")
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(io.UnsupportedOperation):
            f.truncate(0)
        with pytest.raises(OSError):
            f.seek(-1)
    with open(volume.device_path, "rb") as raw:
        raw.seek(1000)
        assert raw.read(5) == b"hello"
        assert os.fstat(raw.fileno()).st_size == 8 * MiB


def test_extents_and_read_only(volume: LocalInfo) -> None:
    conn = connector_for(volume)
    with conn.open(volume, "r+b") as f:
        f.seek(2 * MiB)
        f.write(b"d" * MiB)
    with conn.open(volume) as f:
        runs = list(f.extents())
        assert [(o, n, d) for o, n, d in runs] == [(0, 2 * MiB, False), (2 * MiB, MiB, True),
                                                    (3 * MiB, 5 * MiB, False)]
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    with pytest.raises(ConnectorError, match="read-only"):
        conn.open(LocalInfo(volume.device_path, "v1", "ro"), "r+b")
