"""The pipelined NBD handle (libnbd's async API): many requests in flight, written behind,
read ahead; the data still lands where it should, in order, and errors still surface."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest

from blockyard.connectors import IscsiConnector, connector_for
from blockyard.connectors import nbd as nbd_connector
from blockyard.errors import ConnectorError
from blockyard.model import parse
from tests.support.daemons import IscsiTarget, MiB, NbdExport, processes_mentioning


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return sha(f.read())


def test_64_mib_write_with_many_requests_in_flight(nbd_export: NbdExport) -> None:
    data = os.urandom(nbd_export.size)
    info = parse(nbd_export.wire())
    with connector_for(info).open(info, "r+b") as f:
        # one call: 64 requests, DEPTH of them in flight
        assert f.write(data) == len(data)
        assert f.tell() == len(data)
    assert file_sha(nbd_export.image) == sha(data)
    assert 64 * MiB // nbd_connector.REQUEST > nbd_connector.DEPTH > 1

    data = os.urandom(nbd_export.size)
    with connector_for(info).open(info, "r+b") as f:
        # odd sizes and offsets, written behind across calls
        pos, step = 0, 3 * MiB + 5
        while pos < len(data):
            assert f.write(data[pos:pos + step]) == min(step, len(data) - pos)
            pos += step
        f.flush()  # every write done and durable
        assert file_sha(nbd_export.image) == sha(data)
        # read back sequentially (read ahead) in odd pieces
        f.seek(0)
        back = bytearray()
        while piece := f.read(MiB + 7):
            back += piece
        assert sha(back) == sha(data)


def test_a_mutable_buffer_is_written_before_write_returns(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    buf = bytearray(b"a" * 4 * MiB)
    with connector_for(info).open(info, "r+b") as f:
        f.write(buf)
        buf[:] = b"b" * len(buf)  # the caller reuses its buffer at once
        f.write(memoryview(buf))
        buf[:] = b"c" * len(buf)
    with open(nbd_export.image, "rb") as raw:
        assert raw.read(4 * MiB) == b"a" * 4 * MiB
        assert raw.read(4 * MiB) == b"b" * 4 * MiB


def test_overlapping_writes_behind_land_in_order(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    expected = bytearray(8 * MiB)
    with connector_for(info).open(info, "r+b") as f:
        for i in range(40):  # each write overlaps the ones before it, all still in flight
            offset = (i * 123_457) % (6 * MiB)
            data = bytes([i]) * (2 * MiB + i)
            f.seek(offset)
            f.write(data)
            expected[offset:offset + len(data)] = data
        f.seek(0)
        assert sha(f.read(8 * MiB)) == sha(expected)
    with open(nbd_export.image, "rb") as raw:
        assert sha(raw.read(8 * MiB)) == sha(expected)


def test_read_ahead_never_returns_stale_data(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    with connector_for(info).open(info, "r+b") as f:
        assert f.read(MiB) == bytes(MiB)
        assert f.read(MiB) == bytes(MiB)  # sequential: the next DEPTH requests are read ahead
        f.seek(5 * MiB)
        f.write(b"new" * 1000)  # inside what was read ahead
        f.seek(2 * MiB)
        assert f.read(3 * MiB) == bytes(3 * MiB)
        assert f.read(3000) == b"new" * 1000
        # a seek away and back also starts afresh
        f.seek(40 * MiB)
        assert f.read(10) == bytes(10)
        f.seek(5 * MiB)
        assert f.read(3000) == b"new" * 1000
    with open(nbd_export.image, "r+b") as raw:  # changed behind the handle's back ...
        raw.seek(10 * MiB)
        raw.write(b"x" * MiB)
    with connector_for(info).open(info) as f:  # ... a new handle sees it, read ahead or not
        f.seek(8 * MiB)
        f.read(MiB)
        assert f.read(MiB) == bytes(MiB)
        assert f.read(MiB) == b"x" * MiB


def test_an_error_behind_a_write_surfaces_on_flush(nbd_export: NbdExport) -> None:
    info = parse(nbd_export.wire())
    f = connector_for(info).open(info, "r+b")
    try:
        f.write(os.urandom(8 * MiB))
        for pid in processes_mentioning(nbd_export.socket):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ConnectorError):
            for _ in range(8):  # written behind: the error may come from a later call
                f.write(os.urandom(8 * MiB))
            f.flush()
    finally:
        with pytest.raises(ConnectorError):
            f.close()  # close flushes, which fails too
    assert f.closed


def test_iscsi_bridged_write_with_many_requests_in_flight(iscsi_target: IscsiTarget,
                                                          short_dir: str) -> None:
    data = os.urandom(iscsi_target.size)
    info = parse(iscsi_target.wire())
    conn = IscsiConnector({"initiator": iscsi_target.initiator}, run_dir=short_dir,
                          login_timeout=15)
    with conn.open(info, "r+b") as f:
        f.write(data[:MiB + 1])  # unaligned end, then written behind from an odd offset
        f.write(data[MiB + 1:])
        f.seek(0)
        assert sha(f.read()) == sha(data)
    assert file_sha(iscsi_target.image) == sha(data)
    assert processes_mentioning(short_dir) == []
