"""The rbd connector, its typed info and its QEMU translation, against a real single-node Ceph
(tests/support/ceph.py): the key travels in the connection info, no ceph.conf is read."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from blockyard.backends import load
from blockyard.backends.rbd import RbdDriver
from blockyard.compute.disks import QemuSource, qemu_source, secret_id
from blockyard.compute.hypervisor import Hypervisor
from blockyard.connectors import RbdConnector, connector_for
from blockyard.errors import ConnectionInfoError, ConnectorError
from blockyard.exec import process_cmdline
from blockyard.model import Connector, GiB, RbdInfo, VolumeRef, parse
from blockyard.rbdimage import RbdHandle
from blockyard.targets.rbd import RbdTarget
from tests.support.ceph import CephCluster, ceph  # noqa: F401  (fixture)
from tests.support.daemons import Qemu, run

MiB = 1024**2


def wire(**data: Any) -> dict[str, Any]:
    base = {"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"],
            "auth_enabled": True, "auth_username": "blockyard", "secret_type": "ceph",
            "secret_uuid": None, "key": "QVFCa2V5", "cluster_name": "ceph",
            "volume_id": "1", "access_mode": "rw", "discard": True}
    base.update(data)
    return {"driver_volume_type": "rbd", "data": base}


# ------------------------------------------------------------------ pure: parse, QEMU


def test_parse_cinder_rbd_info() -> None:
    info = parse(wire())
    assert isinstance(info, RbdInfo)
    assert (info.pool, info.image, info.monitors) == ("volumes", "volume-1",
                                                      (("127.0.0.1", 6789),))
    assert info.mon_host == "127.0.0.1:6789"
    assert info.key == "QVFCa2V5" and "QVFCa2V5" not in repr(info)
    assert isinstance(connector_for(info), RbdConnector)


@pytest.mark.parametrize(("data", "key"), [
    ({"name": "no-pool"}, "name"),
    ({"hosts": []}, "hosts"),
    ({"ports": ["1", "2"]}, "ports"),
    ({"ports": ["x"]}, "ports"),
    ({"auth_username": None}, "auth_username"),
])
def test_parse_names_the_bad_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConnectionInfoError, match=repr(key)):
        parse(wire(**data))


def test_qemu_source_for_rbd() -> None:
    info = parse(wire(hosts=["10.0.0.1", "10.0.0.2"], ports=["6789", "6790"]))
    source = qemu_source(info, prefix="vol1")
    assert source == QemuSource(
        {"driver": "rbd", "pool": "volumes", "image": "volume-1",
         "server": [{"host": "10.0.0.1", "port": "6789"}, {"host": "10.0.0.2", "port": "6790"}],
         "user": "blockyard", "auth-client-required": ["cephx"],
         "key-secret": secret_id("vol1")},
        read_only=False, secrets={secret_id("vol1"): b"AQBkey"})  # QEMU wants it decoded
    assert "QVFCa2V5" not in repr(source) and "AQBkey" not in repr(source)
    with pytest.raises(ConnectionInfoError, match="base64"):
        qemu_source(parse(wire(key="not base64!")), prefix="v")
    ro = qemu_source(parse(wire(access_mode="ro", key=None)), prefix="v")
    assert ro.read_only and ro.secrets == {} and "key-secret" not in ro.options


# ------------------------------------------------------------------ against Ceph


@pytest.fixture
def volume(ceph: CephCluster) -> Iterator[tuple[RbdDriver, VolumeRef, dict[str, Any]]]:  # noqa: F811
    """A 1 GiB volume of the rbd driver and its connection info (as the API returns it)."""
    driver = load("ceph", "rbd", ceph.driver_options(), RbdTarget())
    assert isinstance(driver, RbdDriver)
    v = VolumeRef(id=str(uuid.uuid4()), size_gb=1)
    driver.create_volume(v)
    try:
        yield driver, v, driver.initialize_connection(v, Connector(host="h")).to_wire()
    finally:
        driver.delete_volume(v)
        driver.close()


def test_connect_open_write_read(volume: tuple[RbdDriver, VolumeRef, dict[str, Any]]) -> None:
    driver, v, info_wire = volume
    info = parse(info_wire)
    assert isinstance(info, RbdInfo)
    conn = connector_for(info)
    device = conn.connect_volume(info)
    assert (device.path, device.size) == (f"rbd:volumes/{v.name}", GiB)
    data = os.urandom(5 * MiB)
    with conn.open(info, "r+b") as handle:
        assert isinstance(handle, RbdHandle)
        handle.seek(300 * MiB)
        handle.write(data)
    # what the connector wrote, the driver's handle reads (one handle class for both)
    with driver.open_volume(v) as mine:
        mine.seek(300 * MiB)
        assert hashlib.sha256(mine.read(5 * MiB) or b"").digest() == \
            hashlib.sha256(data).digest()
    with conn.open(info) as handle:
        assert [(e.offset, e.length) for e in handle.extents() if e.is_data] == \
            [(300 * MiB, 8 * MiB)]  # two 4 MiB objects
        with pytest.raises(OSError):
            handle.write(b"x")
    driver.extend_volume(v, 2)
    assert conn.extend_volume(info) == 2 * GiB
    conn.disconnect_volume(info, device)


def test_pipelined_writes_on_a_real_image(
        volume: tuple[RbdDriver, VolumeRef, dict[str, Any]]) -> None:
    """Many pieces in flight, an overwrite of data still in flight, a read before any flush:
    the image holds exactly the last bytes written."""
    driver, v, info_wire = volume
    info = parse(info_wire)
    assert isinstance(info, RbdInfo)
    first, second = os.urandom(96 * MiB), os.urandom(3 * MiB)
    with connector_for(info).open(info, "r+b") as handle:
        handle.write(first)
        handle.seek(10 * MiB + 12345)
        handle.write(second)
        handle.seek(10 * MiB)
        assert handle.read(MiB) == first[10 * MiB:10 * MiB + 12345] + second[:MiB - 12345]
    want = bytearray(first)
    want[10 * MiB + 12345:10 * MiB + 12345 + len(second)] = second
    with driver.open_volume(v) as mine:
        assert hashlib.sha256(mine.read(96 * MiB) or b"").digest() == \
            hashlib.sha256(want).digest()


def test_read_only_access_refuses_write_mode(
        volume: tuple[RbdDriver, VolumeRef, dict[str, Any]]) -> None:
    info = parse(dict(volume[2], data=dict(volume[2]["data"], access_mode="ro")))
    with pytest.raises(ConnectorError, match="read-only"):
        connector_for(info).open(info, "r+b")


def test_a_wrong_key_is_refused(volume: tuple[RbdDriver, VolumeRef, dict[str, Any]]) -> None:
    other = "AQBGzCtnAAAAABAAyZ9lz3bS6F0kgn0GsGAMJQ=="  # a well-formed key nobody has
    info = parse(dict(volume[2], data=dict(volume[2]["data"], key=other)))
    with pytest.raises(ConnectorError):
        RbdConnector(connect_timeout=2).connect_volume(info)


def test_a_missing_image_is_refused(
        volume: tuple[RbdDriver, VolumeRef, dict[str, Any]]) -> None:
    info = parse(dict(volume[2], data=dict(volume[2]["data"], name="volumes/volume-nope")))
    with pytest.raises(ConnectorError, match="volume-nope"):
        connector_for(info).connect_volume(info)


def test_qemu_hot_plugs_an_rbd_volume(
        volume: tuple[RbdDriver, VolumeRef, dict[str, Any]],
        qemu: Qemu) -> None:  # (QEMU, named last, is stopped before the delete)
    """blockdev-add driver=rbd with the key as a secret object, device_add, query, resize."""
    driver, v, info_wire = volume
    info = parse(info_wire)
    assert isinstance(info, RbdInfo) and info.key
    source = qemu_source(info, prefix="vol-1")
    with driver.open_volume(v, "r+b") as handle:
        handle.write(b"written by blockyard")

    async def body(hv: Hypervisor) -> None:
        for object_id, value in source.secrets.items():
            await hv.add_secret(object_id, value)
        await hv.blockdev_add("vol-1", dict(source.options))
        await hv.device_add("disk-1", "vol-1", "rbd-serial")
        [disk] = await hv.query_disks()
        assert (disk.node_name, disk.size) == ("vol-1", GiB)
        driver.extend_volume(v, 2)  # online: QEMU's librbd sees the new size
        await hv.block_resize("vol-1", 2 * GiB)
        [disk] = await hv.query_disks()
        assert disk.size == 2 * GiB
        await hv.quit()  # closes the image: a killed QEMU's watch would hold it for a while
    run(qemu, body, timeout=30)
    assert info.key not in " ".join(process_cmdline(qemu.proc.pid))
