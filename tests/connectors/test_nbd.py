"""The NBD connector against a real qemu-nbd on a unix socket over a sparse file."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from blockyard.connectors import connector_for
from blockyard.errors import ConnectorError
from blockyard.model import NbdInfo, parse
from tests.support.daemons import MiB, NbdExport

# (offset, data): aligned, unaligned, across a 4 KiB boundary, one byte, a large run
PATTERN = [
    (0, b"A" * 4096),
    (5 * MiB + 7, bytes(range(256)) * 13),
    (8 * MiB - 100, b"crossing" * 40),
    (20 * MiB + 1, b"!"),
    (32 * MiB, os.urandom(3 * MiB + 5)),
]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_connect_extend_disconnect(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    conn = connector_for(info)
    device = conn.connect_volume(info)
    assert device.path == f"nbd+unix:///vol?socket={nbd_export.socket}"
    assert device.size == nbd_export.size
    assert conn.extend_volume(info) == nbd_export.size
    conn.disconnect_volume(info, device)


def test_write_read_pattern_lands_in_the_file(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    with connector_for(info).open(info, "r+b") as f:
        assert f.size == nbd_export.size
        for offset, data in PATTERN:
            assert f.seek(offset) == offset
            assert f.write(data) == len(data)
            assert f.tell() == offset + len(data)
        for offset, data in reversed(PATTERN):
            f.seek(offset)
            assert f.read(len(data)) == data
    with open(nbd_export.image, "rb") as raw:
        for offset, data in PATTERN:
            raw.seek(offset)
            assert sha(raw.read(len(data))) == sha(data)


def test_seek_semantics_and_bounds(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    with connector_for(info).open(info, "r+b") as f:
        assert f.seek(10) == 10
        assert f.seek(5, io.SEEK_CUR) == 15
        assert f.seek(-4, io.SEEK_END) == nbd_export.size - 4
        f.write(b"tail")
        assert f.read(1) == b""
        f.seek(nbd_export.size + 100)
        assert f.read(1) == b""
        with pytest.raises(OSError):
            f.write(b"x")
        with pytest.raises(OSError):
            f.seek(-1)
        with pytest.raises(io.UnsupportedOperation):
            f.truncate(0)
        buf = bytearray(6)
        f.seek(nbd_export.size - 4)
        assert f.readinto(buf) == 4 and buf[:4] == b"tail"
    with open(nbd_export.image, "rb") as raw:
        raw.seek(-4, io.SEEK_END)
        assert raw.read() == b"tail"


def test_extents_tell_data_from_holes(nbd_export: NbdExport) -> None:
    with open(nbd_export.image, "r+b") as raw:
        raw.seek(4 * MiB)
        raw.write(b"x" * MiB)
        raw.seek(40 * MiB)
        raw.write(b"y" * 2 * MiB)
    info = parse(nbd_export.wire())
    with connector_for(info).open(info) as f:
        assert list(f.extents()) == [
            (0, 4 * MiB, False), (4 * MiB, MiB, True), (5 * MiB, 35 * MiB, False),
            (40 * MiB, 2 * MiB, True), (42 * MiB, 22 * MiB, False),
        ]
        assert list(f.extents(4 * MiB + 10, 100)) == [(4 * MiB + 10, 100, True)]
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"no")


def test_unreachable_export_is_a_clear_error(nbd_export: NbdExport) -> None:
    info = NbdInfo("vol", socket=nbd_export.socket + ".nope")
    with pytest.raises(ConnectorError, match="connecting to nbd\\+unix"):
        connector_for(info).connect_volume(info)
    wrong_name = NbdInfo("nope", socket=nbd_export.socket)
    with pytest.raises(ConnectorError):
        connector_for(wrong_name).open(wrong_name)
